"""`healmesh demo drift`: the self-healing loop, end to end, on a running `make up`.

1. baseline traffic (no drift) with labels: the champion's live AUC;
2. drifted traffic (covariate shift or concept drift) with labels: the old champion under drift;
3. a drift_monitor run triggered through Airflow's API; drift starts retrain (asset), a
   registered challenger starts canary_rollout (asset); labelled drifted traffic keeps flowing
   so that every canary stage has data;
4. after promotion: the new champion's AUC on the drifted traffic.

Prints a timeline and writes a JSON summary to ``$HEALMESH_HOME/demo/``. Traffic goes only
to 127.0.0.1 and is bounded.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import UTC, datetime
from typing import Any

from healmesh import registry
from healmesh.data import DriftSpec
from healmesh.errors import ConfigError
from healmesh.lifecycle import traffic
from healmesh.lifecycle.airflow_api import AirflowClient
from healmesh.ops import procs, stack
from healmesh.settings import get_settings
from healmesh.urls import local_url


def drift_scenarios() -> dict[str, DriftSpec]:
    """The drifts `demo drift --kind NAME` can dial: the project's generator names them
    (``SCENARIOS``); a project with a data file rehearses its own with `healmesh replay`."""
    from healmesh.data.synthetic import scenarios

    return scenarios()


class Timeline:
    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.steps: list[dict[str, Any]] = []

    def say(self, what: str, **data: Any) -> None:
        t = time.monotonic() - self.t0
        self.steps.append({"t": round(t, 1), "what": what, **data})
        print(f"[{t:7.1f}s] {what}", flush=True)


def _auc(result: traffic.TrafficResult, version: str | None) -> float | None:
    auc = result.auc("xgboost", version)
    return round(auc, 4) if auc is not None else None


def _newest_event(s: Any, since: float, kinds: tuple[str, ...]) -> tuple[str, str] | None:
    """Kind and message of the newest lifecycle event of ``kinds`` (prefixes) after ``since``."""
    from healmesh.control import events
    from healmesh.redis_conn import sync_client

    client = sync_client(s)
    try:
        for e in events.recent(client, s.key_prefix, 200):
            if e["kind"].startswith(kinds) and e["when"] >= since:
                return e["kind"], e["message"]
    finally:
        client.close()
    return None


def _drift_decision(s: Any, since: float) -> tuple[str | None, str]:
    """The decision and headline of the newest drift check recorded after ``since`` (unix seconds)."""
    found = _newest_event(s, since, ("drift_",))
    return (found[0].removeprefix("drift_"), found[1]) if found else (None, "no drift check recorded its decision")


class GeneratedTraffic:
    """The project's generator, drifted by one of its scenarios."""

    def __init__(self, gateway: str, kind: str, n: int, timeout_s: float) -> None:
        known = drift_scenarios()
        if kind not in known:
            raise ConfigError(f"the project's generator names no drift {kind!r}; it has {', '.join(known) or 'none'}")
        self.gateway, self.kind, self.n, self.timeout_s, self.drift = gateway, kind, n, timeout_s, known[kind]

    def baseline(self) -> traffic.TrafficResult | None:
        return traffic.send_sync(self.gateway, 3_000, seed=101, batch=20)

    def window(self) -> traffic.TrafficResult:
        return traffic.send_sync(self.gateway, self.n, seed=202, drift=self.drift, batch=50)

    def background(self) -> Any:
        return traffic.Background(self.gateway, drift=self.drift, chunk=300, batch=1, concurrency=8,
                                  max_seconds=self.timeout_s)

    def after(self) -> traffic.TrafficResult:
        return traffic.send_sync(self.gateway, 5_000, seed=303, drift=self.drift, batch=20)


class ReplayedTraffic:
    """A user's own later data, replayed in file order with its labels: the first ``n`` rows fill
    the drift window, the next ones flow during the rollout, the last ``after_rows`` judge the
    champion afterwards."""

    def __init__(self, gateway: str, data: str, rows: tuple[int, int | None], n: int, *, rate: float = 100.0,
                 after_rows: int = 1_000, timeout_s: float = 1_200.0) -> None:
        from healmesh.ops import replay

        self.gateway, self.kind, self.rate, self.timeout_s = gateway, "replay", rate, timeout_s
        everything = replay.load_rows(data, rows)
        total = len(everything.bodies)
        if total < n + after_rows + 500:
            raise ConfigError(f"{data} rows {rows}: {total} rows; the replayed demo needs at least "
                              f"{n + after_rows + 500} ({n} for the drift window, 500 or more during the rollout, "
                              f"{after_rows} after it)")
        cut = [0, n, total - after_rows, total]
        self.parts = [replay.ReplayRows(everything.bodies[a:b], everything.labels[a:b], everything.ignored)
                      for a, b in zip(cut, cut[1:], strict=False)]
        self.n = n

    def _send(self, part: int, options: Any = None) -> traffic.TrafficResult:
        import asyncio

        from healmesh.ops import replay

        summary = asyncio.run(replay.replay(self.parts[part], self.gateway, options or replay.Options(concurrency=8)))
        return as_traffic(summary)

    def baseline(self) -> traffic.TrafficResult | None:
        return None  # the champion's own period is its training data: its holdout AUC is the baseline

    def window(self) -> traffic.TrafficResult:
        return self._send(0)

    def background(self) -> Any:
        return _ReplayBackground(self)

    def after(self) -> traffic.TrafficResult:
        return self._send(2)


class _ReplayBackground(traffic.Background):
    """``traffic.Background`` whose traffic is the replay's rollout rows instead of generated ones."""

    def __init__(self, source: ReplayedTraffic) -> None:
        super().__init__(source.gateway, max_seconds=source.timeout_s)
        self.source = source

    def _run(self) -> None:
        from healmesh.ops import replay

        options = replay.Options(rate=self.source.rate, concurrency=8, stop=self._stop)
        # the rollout may outlast the rows: they go round again (new request ids) until it ends
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            self.result.merge(self.source._send(1, options))


def as_traffic(summary: Any) -> traffic.TrafficResult:
    """A replay's summary in the shape the generated traffic reports (answers by model version)."""
    out = traffic.TrafficResult(sent=summary.sent, answered=summary.answered, labelled=summary.labels_accepted,
                                seconds=summary.elapsed_s)
    out.errors.update(summary.errors)
    out.variants.update(summary.by_variant)
    for a in summary.answers:
        out.scored[(a.model, a.model_version)].append((a.label, a.probability))
    return out


def later_rows(p: Any) -> tuple[int, int | None]:
    """The rows of a project's data file after the ones it trains on."""
    if p.data.rows is None or p.data.rows[1] is None:
        raise ConfigError(f"project {p.name!r} trains on all of {p.data.path}: give the later data to replay "
                          "with --data FILE (and --rows START:STOP)")
    return (p.data.rows[1], None)


def run(kind: str = "concept", n: int = 20_000, timeout_s: float = 1_200.0, data: str | None = None,
        rows: tuple[int, int | None] | None = None) -> int:
    """The loop on the running mesh. A project with a generator drifts it (``kind``); a project with
    a data file replays its own later rows (``data``/``rows``, by default the rows after the ones it
    trained on), ``n`` of them for the drift window."""
    from healmesh import project

    s = get_settings()
    if not s.configured_tracking_uri:  # the registry as the mesh sees it: the MLflow server `up` runs
        os.environ["MLFLOW_TRACKING_URI"] = s.local_mlflow_uri
    gateway = local_url(s.gateway_port)
    line = Timeline()
    password = procs.airflow_password(stack.airflow_home(s))
    if password is None:
        print("Airflow is not running here (`make up` starts it)", file=sys.stderr)
        return 1
    p = project.active()
    source: GeneratedTraffic | ReplayedTraffic
    if data is None and p.data.generator is None:
        data, rows = p.resolve(p.data.path or ""), rows or later_rows(p)
    if data is not None:
        source = ReplayedTraffic(gateway, data, rows or (0, None), n, timeout_s=timeout_s)
    else:
        source = GeneratedTraffic(gateway, kind, n, timeout_s)
    kind = source.kind
    af = AirflowClient(local_url(s.airflow_port), "admin", password)
    for dag_id in ("drift_monitor", "retrain", "canary_rollout"):
        af.unpause(dag_id)
    name = s.xgb_registered_name
    before = registry.version_by_alias(s, name, s.champion_alias)
    old = before.version if before else None
    line.say(f"champion is {name} v{old}; {kind} drift demo starts")

    base = source.baseline()
    auc_before = _auc(base, old) if base is not None else None
    if base is not None:
        line.say(f"baseline: {base.answered} answers, {base.labelled} labels, champion AUC {auc_before}")
    drifted = source.window()
    auc_drifted = _auc(drifted, old)
    line.say(f"{kind} drift: {drifted.answered} answers, {drifted.labelled} labels, "
             f"old champion AUC under drift {auc_drifted}")

    started, started_unix = datetime.now(UTC).isoformat(), time.time()
    gate: tuple[str, str] | None = None
    run_id = af.trigger("drift_monitor", {"window_records": min(n, 10_000)})
    line.say(f"drift_monitor triggered ({run_id})")
    with source.background() as bg:
        dm = af.wait("drift_monitor", run_id, timeout_s=300)
        decision, headline = _drift_decision(s, started_unix)
        line.say(f"drift_monitor: {dm['state']}; decision {decision}: {headline}")
        try:
            if decision != "drift":
                line.say(f"the drift check decided {decision}: no retrain (its report says why)")
            else:
                rt = af.next_run_after("retrain", started, timeout_s=120)
                line.say(f"retrain started by the drift asset ({rt['dag_run_id']})")
                rt = af.wait("retrain", rt["dag_run_id"], timeout_s=600)
                line.say(f"retrain: {rt['state']}")
                gate = _newest_event(s, started_unix, ("candidate_registered", "candidate_rejected"))
                line.say(f"gate: {gate[1] if gate else 'no verdict recorded'}")
                if gate is None or gate[0] == "candidate_rejected":
                    line.say("the gate kept the champion: no canary")
                else:
                    cr = af.next_run_after("canary_rollout", started, timeout_s=120)
                    line.say(f"canary_rollout started by the challenger asset ({cr['dag_run_id']})")
                    cr = af.wait("canary_rollout", cr["dag_run_id"], timeout_s=timeout_s)
                    line.say(f"canary_rollout: {cr['state']}")
        except TimeoutError as exc:
            line.say(f"stopped waiting: {exc}")
    after = registry.version_by_alias(s, name, s.champion_alias)
    new = after.version if after else None
    healed = source.after()
    auc_healed = _auc(healed, new)
    line.say(f"champion is now v{new}; AUC on the drifted traffic {auc_healed}; "
             f"client errors during the rollout: {sum(bg.result.errors.values())}")
    outcome = {"kind": kind, "project": p.name, "old_champion": old, "new_champion": new, "promoted": new != old,
               "drift_decision": decision, "drift_headline": headline, "gate": gate[1] if gate else None,
               "auc_before_drift": auc_before, "auc_old_model_under_drift": auc_drifted,
               "auc_after_healing": auc_healed, "loop_seconds": line.steps[-1]["t"],
               "rollout_traffic": {"answered": bg.result.answered, "errors": dict(bg.result.errors),
                                   "variants": dict(bg.result.variants)},
               "timeline": line.steps, "report_index": str(s.drift_reports_dir / "index.html")}
    out_dir = s.home / "demo"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"drift-{kind}-{int(time.time())}.json"
    path.write_text(json.dumps(outcome, indent=2))
    print(json.dumps({k: v for k, v in outcome.items() if k != "timeline"}, indent=2))
    print(f"summary: {path}")
    # a drift judged not worth a retrain is a finished loop too (the report says why); a retrain
    # that did not end in a promotion is not
    return 0 if outcome["promoted"] or decision not in ("drift", None) else 1
