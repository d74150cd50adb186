"""The lifecycle DAGs, run for real (`dag.test()` on a migrated Airflow metadata DB) against a
real mesh (scorers, gateway, Redis) and a real MLflow server.

The tests in this module build on each other, in file order: v1 is trained here; covariate
drift promotes v2; a bad challenger is rolled back; concept drift promotes v3.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from html import escape as html_text
from pathlib import Path
from typing import Any

import httpx
import pytest

from healmesh import registry, schema
from healmesh.control import events
from healmesh.data import DriftSpec, generate
from healmesh.lifecycle.traffic import Background, send_sync
from healmesh.settings import Settings, get_settings
from healmesh.training import TrainConfig, train
from healmesh.urls import local_redis_url

from .conftest import (
    FAST_CANARY,
    TOKEN,
    metric_value,
    poll,
    scorer_env,
    scorer_urls,
    start_gateway,
    start_scorer,
)

pytestmark = pytest.mark.integration
AUTH = {"Authorization": f"Bearer {TOKEN}"}
NAMES = {"HEALMESH_XGB_REGISTERED_NAME": "life-xgboost", "HEALMESH_MLP_REGISTERED_NAME": "life-mlp"}
COVARIATE = DriftSpec(covariate_shift={"amount": 1.2, "distance_from_home_km": 1.0, "channel": 0.4})
CONCEPT = DriftSpec(concept_drift=1.0)
NUMBERS: dict[str, Any] = {}


class Life:
    def __init__(self, gateway: str, xgb: str, redis_port: int, dags: dict[str, Any], reports: Path) -> None:
        self.gateway, self.xgb, self.redis_port, self.dags, self.reports = gateway, xgb, redis_port, dags, reports

    @property
    def settings(self) -> Settings:
        return get_settings()

    def alias(self, alias: str) -> str | None:
        ref = registry.version_by_alias(self.settings, "life-xgboost", alias)
        return ref.version if ref else None

    def run(self, dag_id: str, conf: dict[str, Any] | None = None) -> tuple[str, dict[str, str]]:
        dr = self.dags[dag_id].test(run_conf=conf or {})
        states = {ti.task_id: str(ti.state) for ti in dr.get_task_instances()}
        return str(dr.state), states

    def newest_summary(self) -> dict[str, Any]:
        return json.loads(max(self.reports.glob("*.json"), key=lambda p: p.stat().st_mtime).read_text())

    def redis(self) -> Any:
        import redis

        return redis.Redis(port=self.redis_port)


def asset_events(name: str) -> int:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        return session.query(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id).filter(
            AssetModel.name == name).count()


@pytest.fixture(scope="module")
def life(mlflow_url, redis_srv, session_dir: Path) -> Iterator[Life]:
    mp = pytest.MonkeyPatch()
    for k, v in NAMES.items():
        mp.setenv(k, v)
    get_settings.cache_clear()
    train(generate(40_000, seed=0), Settings(), TrainConfig(seed=0, mlp_epochs=3, save_to_bentoml=False))
    env = scorer_env(mlflow_url, **NAMES)
    scorers = {name: start_scorer(name, session_dir, env, tag="-life") for name in ("xgboost", "pytorch", "fallback")}
    gw = start_gateway(session_dir, redis_srv.port, scorer_urls(scorers), tag="life")
    airflow = Path(sys.executable).parent / "airflow"
    migrated = subprocess.run([str(airflow), "db", "migrate"], capture_output=True, text=True, timeout=300)
    assert migrated.returncode == 0, migrated.stdout[-2000:] + migrated.stderr[-2000:]
    fast = {"HEALMESH_GATEWAY_URL": gw.url, "HEALMESH_XGB_URL": scorers["xgboost"].url,
            "HEALMESH_REDIS_URL": local_redis_url(redis_srv.port), "HEALMESH_KEY_PREFIX": "hm-life",
            "HEALMESH_RETRAIN__MIN_LABELS": "500", "HEALMESH_CHALLENGER_POKE_S": "1",
            # the healing challengers are judged on error rate and latency (quality where seen, with
            # a wide margin); quality is required only in the test of a worse model
            **FAST_CANARY}
    for k, v in fast.items():
        mp.setenv(k, v)
    get_settings.cache_clear()
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(Path(__file__).resolve().parents[2] / "dags"))
    assert not bag.import_errors, bag.import_errors
    try:
        yield Life(gw.url, scorers["xgboost"].url, redis_srv.port, bag.dags, get_settings().drift_reports_dir)
    finally:
        gw.stop()
        for s in scorers.values():
            s.stop()
        mp.undo()
        get_settings.cache_clear()


def test_without_drift_a_report_is_still_written_and_indexed(life):
    base = send_sync(life.gateway, 3_000, seed=1, batch=20)
    assert base.answered == 3_000 and not base.errors
    NUMBERS["auc_before_drift_v1"] = base.auc("xgboost", "1")
    state, tasks = life.run("drift_monitor", {"window_records": 3_000})
    assert state == "success" and tasks["request_retraining"] == "skipped"
    summary = life.newest_summary()
    assert summary["decision"] == "no_drift" and summary["window_size"] == 3_000
    assert (life.reports / summary["html"]).exists()
    assert summary["name"] in (life.reports / "index.html").read_text()
    # a window too small for a decision is recorded as such, not as "no drift"
    state, _ = life.run("drift_monitor", {"window_records": 100})
    small = life.newest_summary()
    assert state == "success" and small["decision"] == "insufficient_data" and small["html"] is None
    # the gauges carry what this check published (they exist at 0 from start-up, so a name says nothing)
    text = published_drift(life, small)
    assert metric_value(text, "healmesh_drift_detected") == 0.0


def test_a_replayed_transaction_is_anomalous_traffic_and_retrains_nothing(life):
    """Issue 11, item 5: a load test replaying one body made the old rule flag 15 of 16 features and
    retrain. Now the check reports anomalous traffic, the report's top says so, and nothing retrains."""
    frame = generate(1, seed=77)
    row = {k: (v.item() if hasattr(v, "item") else v)
           for k, v in frame[[*schema.active().feature_names, schema.active().entity_key]].iloc[0].items()}
    with httpx.Client(timeout=30) as client:
        for _ in range(50):
            r = client.post(life.gateway + "/api/v1/predict", json=[row] * 20)
            assert r.status_code == 200, r.text
    drift_events = asset_events("healmesh://drift")
    state, tasks = life.run("drift_monitor", {"window_records": 1_000})
    summary = life.newest_summary()
    assert state == "success" and tasks["request_retraining"] == "skipped", tasks
    assert summary["decision"] == "anomalous_traffic", summary["reasons"]
    assert summary["headline"].startswith("Anomalous traffic, no retrain") and summary["drifted_features"] == []
    assert asset_events("healmesh://drift") == drift_events
    page = (life.reports / summary["html"]).read_text()
    banner = page.index("id='healmesh-decision'")
    assert page.index("<body") < banner and "anomalous_traffic" in page[banner:banner + 2_000]
    recorded = [e for e in events.recent(life.redis(), "hm-life", 20) if e["kind"] == "drift_anomalous_traffic"]
    assert recorded and recorded[0]["data"]["check_id"] == summary["name"]
    text = published_drift(life, summary)
    assert metric_value(text, "healmesh_drift_detected") == 0.0


def published_drift(life: Life, summary: dict[str, Any]) -> str:
    """/metrics once the gateway exports the check ``summary`` describes (it polls the control state)."""
    def exported() -> str | None:
        text = httpx.get(life.gateway + "/metrics").text
        at = metric_value(text, "healmesh_drift_last_check_timestamp_seconds")
        return text if at is not None and abs(at - summary["checked_at"]) < 1e-3 else None

    return poll(exported, timeout=15, what=f"the gateway to export drift check {summary['name']}")


def test_covariate_drift_retrains_and_promotes_a_new_champion(life):
    sent = send_sync(life.gateway, 10_000, seed=2, drift=COVARIATE, batch=50)
    assert sent.labelled == 10_000
    drift_events = asset_events("healmesh://drift")
    t0 = time.perf_counter()
    state, tasks = life.run("drift_monitor", {"window_records": 10_000})
    NUMBERS["drift_check_dag_seconds_10k"] = round(time.perf_counter() - t0, 1)
    summary = life.newest_summary()
    assert state == "success" and summary["decision"] == "drift" and tasks["request_retraining"] == "success"
    assert {"amount", "distance_from_home_km"} <= set(summary["drifted_features"])
    assert asset_events("healmesh://drift") == drift_events + 1  # what starts the retrain DAG
    text = published_drift(life, summary)
    assert metric_value(text, "healmesh_drift_detected") == 1.0
    assert metric_value(text, "healmesh_drift_share_drifted") == pytest.approx(summary["share_drifted"])
    assert metric_value(text, "healmesh_drift_score", feature="amount", statistic="psi") > 0.1

    state, tasks = life.run("retrain", {"drift_check_id": summary["name"], "trigger": "drift"})
    assert state == "success" and tasks["announce_challenger"] == "success"
    assert life.alias("challenger") == "2" and life.alias("champion") == "1"
    info = registry.version_info(life.settings, "life-xgboost", "2")
    from mlflow import MlflowClient

    run = MlflowClient(life.settings.tracking_uri).get_run(info.run_id)
    assert run.data.tags["healmesh.drift_check"] == summary["name"] and run.data.tags["healmesh.trigger"] == "drift"
    assert run.data.tags["healmesh.gate"] == "pass" and run.data.tags["healmesh.window_last_id"]
    # the gate's interval is recorded with the run (issue 11): the default margin, cleared with room
    gate = life.settings.retrain.gate
    low, high = run.data.metrics["gate_ci_lower"], run.data.metrics["gate_ci_upper"]
    assert -gate.margin < low < run.data.metrics["gate_auc_difference"] < high, run.data.metrics
    assert run.data.params["gate_outcome"] == "pass" and float(run.data.params["gate_margin"]) == gate.margin
    assert run.data.metrics["gate_positives"] >= gate.min_positives
    NUMBERS["covariate_gate_interval"] = [round(low, 4), round(high, 4)]
    artifacts = {a.path for a in MlflowClient(life.settings.tracking_uri).list_artifacts(info.run_id)}
    assert {"reference", "drift_report_html", "drift_report_json"} <= artifacts
    assert asset_events("healmesh://challenger") >= 1

    with Background(life.gateway, drift=COVARIATE, chunk=200, concurrency=8) as bg:
        t0 = time.perf_counter()
        state, tasks = life.run("canary_rollout")
        NUMBERS["rollout_dag_seconds"] = round(time.perf_counter() - t0, 1)
    judged = events.stage_verdicts(life.redis(), "hm-life")
    if state != "success":
        pytest.fail(f"the rollout failed: {tasks}\n" + "\n".join(judged))
    NUMBERS["covariate_rollout_stages"] = judged
    assert tasks["promote"] == "success" and tasks["rollback"] == "skipped"
    assert bg.result.answered > 500 and not bg.result.errors, bg.result.errors
    assert bg.result.variants["xgboost_canary"] > 0
    assert life.alias("champion") == "2" and life.alias("challenger") is None
    assert registry.version_info(life.settings, "life-xgboost", "2").tags["healmesh.previous_champion"] == "1"
    after = send_sync(life.gateway, 400, seed=3, batch=1, concurrency=8)
    xgb = {v for (m, v) in after.scored if m == "xgboost"}
    assert xgb == {"2"}, after.scored.keys()
    rollout = httpx.get(life.gateway + "/api/v1/admin/rollout", headers=AUTH).json()
    assert rollout["status"] == "promoted" and rollout["stage"] == 0


# a slow canary fails on latency, or on the timeouts its calls start to hit: either is a verdict
@pytest.mark.parametrize("fault,reasons", [({"error_rate": 1.0}, ("error_rate (error rate)",)),
                                           ({"latency_ms": 300}, ("latency (log latency)", "error_rate (error rate)"))])
def test_a_bad_challenger_is_rolled_back_in_the_shadow_stage_before_any_user_sees_it(life, fault, reasons):
    registry.set_alias(life.settings, "life-xgboost", "challenger", "1")
    assert httpx.put(life.xgb + "/admin/faults", headers=AUTH, json={**fault, "slot": "canary"}).status_code == 200
    try:
        with Background(life.gateway, drift=COVARIATE, chunk=200, concurrency=8) as bg:
            state, tasks = life.run("canary_rollout")
    finally:
        httpx.delete(life.xgb + "/admin/faults", headers=AUTH)
    assert state == "failed"
    assert tasks["shadow"] == "failed" and tasks["rollback"] == "success"
    assert tasks["stage_10"] == "upstream_failed" and tasks["promote"] == "upstream_failed"
    assert life.alias("champion") == "2" and life.alias("challenger") is None
    assert not bg.result.errors and bg.result.answered > 100  # the canary failed, the clients did not
    # no user was routed to it: every answer came from the champion, PyTorch or the fallback chain
    assert not [k for k in bg.result.scored if k == ("xgboost", "1")], bg.result.scored.keys()
    rollout = httpx.get(life.gateway + "/api/v1/admin/rollout", headers=AUTH).json()
    assert rollout["status"] == "rolled_back" and rollout["stage"] == 0
    assert any(r in rollout["note"] for r in reasons), rollout["note"]
    recorded = [e for e in events.recent(life.redis(), "hm-life", 20) if e["kind"] == "rolled_back"]
    assert recorded and "the shadow stage" in recorded[0]["message"]
    assert registry.version_info(life.settings, "life-xgboost", "1").tags["healmesh.rollout"] == "rolled_back"


def test_concept_drift_is_healed(life):
    base = send_sync(life.gateway, 3_000, seed=4, batch=20)
    before = base.auc("xgboost", "2")
    drifted = send_sync(life.gateway, 15_000, seed=5, drift=CONCEPT, batch=50)
    under = drifted.auc("xgboost", "2")
    assert under < before - 0.08, (before, under)
    state, _ = life.run("drift_monitor", {"window_records": 15_000})
    summary = life.newest_summary()
    assert state == "success" and summary["decision"] == "drift"
    assert any("live AUC" in r for r in summary["reasons"]), summary["reasons"]
    state, tasks = life.run("retrain", {"drift_check_id": summary["name"], "trigger": "drift"})
    assert state == "success" and life.alias("challenger") == "3", tasks
    with Background(life.gateway, drift=CONCEPT, chunk=200, concurrency=8) as bg:
        state, tasks = life.run("canary_rollout")
    judged = events.stage_verdicts(life.redis(), "hm-life")
    if state != "success":
        pytest.fail(f"the rollout failed: {tasks}\n" + "\n".join(judged))
    NUMBERS["concept_rollout_stages"] = judged
    assert life.alias("champion") == "3" and not bg.result.errors
    healed = send_sync(life.gateway, 6_000, seed=6, drift=CONCEPT, batch=20).auc("xgboost", "3")
    NUMBERS.update(auc_before_drift=round(before, 4), auc_old_model_under_concept_drift=round(under, 4),
                   auc_after_healing=round(healed, 4))
    print(f"\nAUC before drift {before:.4f}; old champion under concept drift {under:.4f}; after healing {healed:.4f}")
    assert healed > under + 0.08


def test_healmesh_rollback_moves_the_champion_back_and_the_scorer_serves_it(life):
    """`healmesh rollback` (the CLI, as an operator types it): champion back to the version the
    promotion recorded, the XGBoost scorer's stable slot reloaded onto it, the event recorded;
    `--to` picks a version; an unknown version fails and moves nothing."""
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "healmesh.ops.cli", "rollback", *args], capture_output=True,
                              text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])

    def stable_serves() -> str | None:
        return httpx.get(life.xgb + "/admin/state", headers=AUTH).json()["slots"]["stable"]["version"]

    champion = life.alias("champion")
    previous = registry.version_info(life.settings, "life-xgboost", champion).tags["healmesh.previous_champion"]
    done = cli()
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    assert f"v{champion} -> v{previous}" in done.stdout
    assert life.alias("champion") == previous and stable_serves() == previous
    recorded = [e for e in events.recent(life.redis(), "hm-life", 20) if e["kind"] == "manual_rollback"]
    assert recorded and f"from v{champion} to v{previous}" in recorded[0]["message"]

    done = cli("--to", champion)  # and forward again, by name
    assert done.returncode == 0 and life.alias("champion") == champion and stable_serves() == champion, done.stderr
    refused = cli("--to", "999")
    assert refused.returncode != 0 and life.alias("champion") == champion and stable_serves() == champion


def test_a_worse_model_is_rolled_back_on_its_quality(life, monkeypatch):
    """A challenger trained on shuffled labels (no fault, answers as fast as the champion) fails only
    on quality: with quality required, the judge compares canary and stable AUC, estimated from the
    served probabilities until enough labels came back through the labeller's /feedback (Background
    sends them), then live. Whichever it reads first, harm beyond the margin must be proven."""
    import numpy as np

    champion = life.alias("champion")
    frame = generate(20_000, seed=31, drift=CONCEPT)
    frame[schema.active().label] = np.random.default_rng(31).permutation(frame[schema.active().label].to_numpy())
    report = train(frame, life.settings, TrainConfig(seed=31, mlp_epochs=1, save_to_bentoml=False))
    worse = report.models["xgboost"].version
    assert worse and worse != champion and life.alias("champion") == champion
    registry.set_alias(life.settings, "life-xgboost", "challenger", worse)
    monkeypatch.setenv("HEALMESH_CANARY__JUDGE__REQUIRE_QUALITY", "true")
    monkeypatch.setenv("HEALMESH_CANARY__JUDGE__AUC_MARGIN", "0.05")
    monkeypatch.setenv("HEALMESH_CANARY__JUDGE__MAX_STAGE_S", "240")
    get_settings.cache_clear()
    try:
        with Background(life.gateway, drift=CONCEPT, chunk=200, concurrency=8) as bg:
            state, tasks = life.run("canary_rollout")
    finally:
        monkeypatch.undo()  # back to the module fixture's canary
        get_settings.cache_clear()
    assert bg.result.answered > 0 and not bg.result.errors
    rollout = httpx.get(life.gateway + "/api/v1/admin/rollout", headers=AUTH).json()
    assert state == "failed" and tasks["shadow"] == "failed" and tasks["promote"] == "upstream_failed", tasks
    assert tasks["rollback"] == "success"
    # proven harm, not a stage that ran out of time: on quality (estimated or live AUC), or on deciding
    # unlike the champion (a model that ranks nothing flags other transactions); in the shadow stage,
    # so no user was routed to it
    assert rollout["status"] == "rolled_back" and "worse by more than the margin is proven" in rollout["note"]
    failed = [e for e in events.recent(life.redis(), "hm-life", 30) if e["kind"] == "stage_failed"][0]
    assert failed["data"]["stage"] == "shadow", failed
    NUMBERS["worse_model_rollback"] = failed["message"]
    proven = {m: j for m, j in failed["data"]["judge"]["metrics"].items() if j["outcome"] == "rollback"}
    assert set(proven) <= {"quality", "disagreement"} and proven, failed["data"]["judge"]
    if "quality" in proven:
        assert proven["quality"]["lower"] > 0.05 and proven["quality"]["kind"] in ("auc", "estimated_auc")
    assert life.alias("champion") == champion and life.alias("challenger") is None


def test_drift_report_and_index_render_in_chromium(life, artifacts_dir):
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is a test dependency (make test installs it)"
    drifted = [json.loads(p.read_text()) for p in life.reports.glob("*.json")]
    summary = max((s for s in drifted if s["decision"] == "drift"), key=lambda s: s["checked_at"])
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--virtual-time-budget=15000"]

    def browse(page: Path, *extra: str) -> str:
        profile = artifacts_dir / f".chromium-{page.stem}"
        done = subprocess.run([chromium, *flags, f"--user-data-dir={profile}", *extra, page.as_uri()],
                              capture_output=True, text=True, timeout=120)
        shutil.rmtree(profile, ignore_errors=True)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    def screenshot(page: Path, png: Path, size: str, min_bytes: int) -> None:
        png.unlink(missing_ok=True)  # a PNG an earlier run left must not pass for this one's
        started = time.time()
        browse(page, f"--window-size={size}", f"--screenshot={png}")
        assert png.is_file() and png.stat().st_mtime >= started - 1, f"{png} was not written by this run"
        assert png.stat().st_size > min_bytes

    report, index = life.reports / summary["html"], life.reports / "index.html"
    screenshot(report, artifacts_dir / "drift_report.png", "1400,2000", 20_000)
    screenshot(index, artifacts_dir / "drift_index.png", "1400,900", 10_000)
    index_dom = browse(index, "--dump-dom")
    assert all(f in index_dom for f in summary["drifted_features"][:3])
    report_dom = browse(report, "--dump-dom")
    assert "Drift is detected" in report_dom and summary["drifted_features"][0] in report_dom
    # healmesh's decision is the first thing in the page's body, and Evidently's headline rendered under it
    # (run with our PSI floor) agrees; the head's scripts carry Evidently's templates, so look in the body
    body = report_dom.index("<body")
    banner = report_dom.index('id="healmesh-decision"')
    assert body < banner < body + 100
    assert html_text(summary["headline"][:60], quote=False) in report_dom[banner:banner + 3_000]
    assert "Drift is detected" in report_dom[banner:] and "Drift is NOT detected" not in report_dom[banner:]
    (artifacts_dir / "lifecycle_numbers.json").write_text(json.dumps(NUMBERS, indent=2))
