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
from pathlib import Path
from typing import Any

import httpx
import pytest

from healmesh import registry
from healmesh.data import DriftSpec, generate
from healmesh.lifecycle import events
from healmesh.lifecycle.traffic import Background, send_sync
from healmesh.settings import Settings, get_settings
from healmesh.training import TrainConfig, train

from .conftest import TOKEN, scorer_env, scorer_urls, start_gateway, start_scorer

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
            "HEALMESH_REDIS_URL": f"redis://127.0.0.1:{redis_srv.port}/0", "HEALMESH_KEY_PREFIX": "hm-life",
            "HEALMESH_CANARY_INTERVAL_S": "4", "HEALMESH_CANARY_DEADLINE_S": "40", "HEALMESH_CANARY_CHECK_EVERY_S": "1",
            # a pass needs the latency sample too: a slow canary is judged on latency before it can pass
            "HEALMESH_CANARY_MIN_REQUESTS": "40", "HEALMESH_CANARY_MIN_LATENCY_SAMPLE": "40",
            "HEALMESH_RETRAIN_MIN_LABELS": "500", "HEALMESH_CHALLENGER_POKE_S": "1"}
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


def test_the_three_dags_parse_thin_and_documented(life):
    assert set(life.dags) == {"drift_monitor", "retrain", "canary_rollout"}
    for dag in life.dags.values():
        assert dag.doc_md and len(dag.doc_md) > 200 and dag.params is not None
    assert "Asset" in type(life.dags["retrain"].timetable).__name__
    assert "Asset" in type(life.dags["canary_rollout"].timetable).__name__
    tasks = [t.task_id for t in life.dags["canary_rollout"].tasks]
    assert tasks[:4] == ["prepare", "stage_10", "stage_50", "stage_100"] and {"promote", "rollback"} <= set(tasks)
    code = ("import sys; from airflow.dag_processing.dagbag import DagBag; b = DagBag(dag_folder='dags'); "
            "heavy = [m for m in ('torch', 'xgboost', 'mlflow', 'evidently', 'redis', 'bentoml') if m in sys.modules]; "
            "print(len(b.dags), heavy); sys.exit(1 if heavy or b.import_errors else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stdout[-500:] + done.stderr[-1500:]


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
    text = httpx.get(life.gateway + "/metrics").text
    assert "healmesh_drift_last_check_timestamp_seconds" in text


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

    state, tasks = life.run("retrain", {"drift_check_id": summary["name"], "trigger": "drift"})
    assert state == "success" and tasks["announce_challenger"] == "success"
    assert life.alias("challenger") == "2" and life.alias("champion") == "1"
    info = registry.version_info(life.settings, "life-xgboost", "2")
    from mlflow import MlflowClient

    run = MlflowClient(life.settings.tracking_uri).get_run(info.run_id)
    assert run.data.tags["healmesh.drift_check"] == summary["name"] and run.data.tags["healmesh.trigger"] == "drift"
    assert run.data.tags["healmesh.gate"] == "passed" and run.data.tags["healmesh.window_last_id"]
    artifacts = {a.path for a in MlflowClient(life.settings.tracking_uri).list_artifacts(info.run_id)}
    assert {"reference", "drift_report_html", "drift_report_json"} <= artifacts
    assert asset_events("healmesh://challenger") >= 1

    with Background(life.gateway, drift=COVARIATE, chunk=200, concurrency=8) as bg:
        t0 = time.perf_counter()
        state, tasks = life.run("canary_rollout")
        NUMBERS["rollout_dag_seconds"] = round(time.perf_counter() - t0, 1)
    assert state == "success", tasks
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
@pytest.mark.parametrize("fault,reasons", [({"error_rate": 1.0}, ("breaker is open", "canary error rate")),
                                           ({"latency_ms": 300}, ("canary p95", "canary error rate"))])
def test_a_bad_challenger_is_rolled_back_at_the_first_stage(life, fault, reasons):
    registry.set_alias(life.settings, "life-xgboost", "challenger", "1")
    assert httpx.put(life.xgb + "/admin/faults", headers=AUTH, json={**fault, "slot": "canary"}).status_code == 200
    try:
        with Background(life.gateway, drift=COVARIATE, chunk=200, concurrency=8) as bg:
            state, tasks = life.run("canary_rollout")
    finally:
        httpx.delete(life.xgb + "/admin/faults", headers=AUTH)
    assert state == "failed"
    assert tasks["stage_10"] == "failed" and tasks["rollback"] == "success"
    assert tasks["stage_50"] == "upstream_failed" and tasks["promote"] == "upstream_failed"
    assert life.alias("champion") == "2" and life.alias("challenger") is None
    assert not bg.result.errors and bg.result.answered > 100  # the canary failed, the clients did not
    rollout = httpx.get(life.gateway + "/api/v1/admin/rollout", headers=AUTH).json()
    assert rollout["status"] == "rolled_back" and rollout["stage"] == 0
    assert any(r in rollout["note"] for r in reasons), rollout["note"]
    recorded = [e for e in events.recent(life.redis(), "hm-life", 20) if e["kind"] == "rolled_back"]
    assert recorded and "stage 10%" in recorded[0]["message"]
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
    assert state == "success" and life.alias("champion") == "3", tasks
    assert not bg.result.errors
    healed = send_sync(life.gateway, 6_000, seed=6, drift=CONCEPT, batch=20).auc("xgboost", "3")
    NUMBERS.update(auc_before_drift=round(before, 4), auc_old_model_under_concept_drift=round(under, 4),
                   auc_after_healing=round(healed, 4))
    print(f"\nAUC before drift {before:.4f}; old champion under concept drift {under:.4f}; after healing {healed:.4f}")
    assert healed > under + 0.08


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
        return done.stdout

    report, index = life.reports / summary["html"], life.reports / "index.html"
    browse(report, "--window-size=1400,2000", f"--screenshot={artifacts_dir / 'drift_report.png'}")
    browse(index, "--window-size=1400,900", f"--screenshot={artifacts_dir / 'drift_index.png'}")
    assert (artifacts_dir / "drift_report.png").stat().st_size > 20_000
    assert (artifacts_dir / "drift_index.png").stat().st_size > 10_000
    index_dom = browse(index, "--dump-dom")
    assert all(f in index_dom for f in summary["drifted_features"][:3])
    report_dom = browse(report, "--dump-dom")
    assert "Drift is detected" in report_dom and summary["drifted_features"][0] in report_dom
    (artifacts_dir / "lifecycle_numbers.json").write_text(json.dumps(NUMBERS, indent=2))
