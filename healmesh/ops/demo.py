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


def _drift_decision(s: Any, since: float) -> tuple[str | None, str]:
    """The decision and headline of the newest drift check recorded after ``since`` (unix seconds)."""
    from healmesh.control import events
    from healmesh.redis_conn import sync_client

    client = sync_client(s)
    try:
        for e in events.recent(client, s.key_prefix, 200):
            if e["kind"].startswith("drift_") and e["when"] >= since:
                return e["kind"].removeprefix("drift_"), e["message"]
    finally:
        client.close()
    return None, "no drift check recorded its decision"


def run(kind: str = "concept", n: int = 20_000, timeout_s: float = 1_200.0) -> int:
    s = get_settings()
    if not s.configured_tracking_uri:  # the registry as the mesh sees it: the MLflow server `up` runs
        os.environ["MLFLOW_TRACKING_URI"] = s.local_mlflow_uri
    gateway = local_url(s.gateway_port)
    line = Timeline()
    password = procs.airflow_password(stack.airflow_home(s))
    if password is None:
        print("Airflow is not running here (`make up` starts it)", file=sys.stderr)
        return 1
    af = AirflowClient(local_url(s.airflow_port), "admin", password)
    for dag_id in ("drift_monitor", "retrain", "canary_rollout"):
        af.unpause(dag_id)
    known = drift_scenarios()
    if kind not in known:
        raise ConfigError(f"the project's generator names no drift {kind!r}; it has {', '.join(known) or 'none'}")
    drift = known[kind]
    name = s.xgb_registered_name
    before = registry.version_by_alias(s, name, s.champion_alias)
    old = before.version if before else None
    line.say(f"champion is {name} v{old}; {kind} drift demo starts")

    base = traffic.send_sync(gateway, 3_000, seed=101, batch=20)
    auc_before = _auc(base, old)
    line.say(f"baseline: {base.answered} answers, {base.labelled} labels, champion AUC {auc_before}")
    drifted = traffic.send_sync(gateway, n, seed=202, drift=drift, batch=50)
    auc_drifted = _auc(drifted, old)
    line.say(f"{kind} drift: {drifted.answered} answers, {drifted.labelled} labels, "
             f"old champion AUC under drift {auc_drifted}")

    started, started_unix = datetime.now(UTC).isoformat(), time.time()
    run_id = af.trigger("drift_monitor", {"window_records": min(n, 10_000)})
    line.say(f"drift_monitor triggered ({run_id})")
    with traffic.Background(gateway, drift=drift, chunk=300, batch=1, concurrency=8, max_seconds=timeout_s) as bg:
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
                cr = af.next_run_after("canary_rollout", started, timeout_s=120)
                line.say(f"canary_rollout started by the challenger asset ({cr['dag_run_id']})")
                cr = af.wait("canary_rollout", cr["dag_run_id"], timeout_s=timeout_s)
                line.say(f"canary_rollout: {cr['state']}")
        except TimeoutError as exc:
            line.say(f"stopped waiting: {exc}")
    after = registry.version_by_alias(s, name, s.champion_alias)
    new = after.version if after else None
    healed = traffic.send_sync(gateway, 5_000, seed=303, drift=drift, batch=20)
    auc_healed = _auc(healed, new)
    line.say(f"champion is now v{new}; AUC on the drifted traffic {auc_healed}; "
             f"client errors during the rollout: {sum(bg.result.errors.values())}")
    outcome = {"kind": kind, "old_champion": old, "new_champion": new, "promoted": new != old,
               "drift_decision": decision, "drift_headline": headline,
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

