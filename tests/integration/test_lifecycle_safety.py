"""The lifecycle's safety rules, run for real (`dag.test()` against real processes): one rollout at
a time (the rollout lease, the canary-slot check, the explicit abort), a failed promotion that
leaves the mesh safe, and a DAG parameter that must not become a path.

This module has its own MLflow server (a test stops and restarts it), its own small models
(``safe-xgboost``, ``safe-mlp``), XGBoost scorer and gateway; the PyTorch and fallback scorers are
the session's. The tests build on each other in file order: v1 is the champion and v2 a
registered candidate from the start; the retrain test registers v3 and v4.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from healmesh import registry
from healmesh.control import events
from healmesh.control.lease import LeaseStore
from healmesh.data import generate
from healmesh.lifecycle.traffic import Background, send_sync
from healmesh.ops import procs
from healmesh.policies.canary import parse_metrics
from healmesh.policies.evidence import Scrape
from healmesh.policies.rollout import Lease
from healmesh.settings import Settings, get_settings
from healmesh.training import TrainConfig, train
from healmesh.urls import local_redis_url

from .conftest import FAST_CANARY, PASS_EVERY_CANDIDATE, TOKEN, scorer_env, start_gateway, start_scorer

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PREFIX = "hm-safe"
NAME = "safe-xgboost"
NAMES = {"HEALMESH_XGB_REGISTERED_NAME": NAME, "HEALMESH_MLP_REGISTERED_NAME": "safe-mlp"}


def wait_for(what: str, check: Callable[[], Any], timeout: float = 300.0, every: float = 0.2) -> Any:
    """Poll ``check`` until it returns something truthy; generous bound, no timing asserted."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Watch:
    """Runs ``fn`` in a thread beside a DAG run; its failure is raised in the test by ``result``."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.value: Any = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(fn,), daemon=True)
        self._thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self.value = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            self.error = exc

    def result(self, timeout: float = 300.0) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the watcher did not finish"
        if self.error is not None:
            raise self.error
        return self.value


class Mesh:
    def __init__(self, gateway: str, xgb: str, redis_port: int, dags: dict[str, Any], mlflow: dict[str, Any]) -> None:
        self.gateway, self.xgb, self.redis_port, self.dags, self.mlflow = gateway, xgb, redis_port, dags, mlflow
        self.mp = pytest.MonkeyPatch()

    @property
    def settings(self) -> Settings:
        return get_settings()

    def setenv(self, **values: str) -> None:
        for k, v in values.items():
            self.mp.setenv(k, v)
        get_settings.cache_clear()

    def alias(self, alias: str) -> str | None:
        ref = registry.version_by_alias(self.settings, NAME, alias)
        return ref.version if ref else None

    def redis(self) -> Any:
        import redis

        return redis.Redis(port=self.redis_port)

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [e for e in events.recent(self.redis(), PREFIX, 500) if kind is None or e["kind"] == kind]

    def rollout(self) -> dict[str, Any]:
        return httpx.get(self.gateway + "/api/v1/admin/rollout", headers=AUTH, timeout=10).json()

    def run(self, dag_id: str, conf: dict[str, Any] | None = None) -> tuple[str, dict[str, str], dict[str, int]]:
        dr = self.dags[dag_id].test(run_conf=conf or {})
        tis = dr.get_task_instances()
        return str(dr.state), {ti.task_id: str(ti.state) for ti in tis}, {ti.task_id: ti.try_number for ti in tis}


@pytest.fixture(scope="module")
def mesh(scorers, redis_srv, session_dir: Path) -> Iterator[Mesh]:
    port, state = procs.free_port(), session_dir / "mlflow-safety"
    logs = session_dir / "logs" / "safety"
    mlflow = {"server": procs.mlflow_server(port, state, logs).launch(timeout=180), "port": port, "state": state,
              "logs": logs}
    url = mlflow["server"].url
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", url)
    for k, v in NAMES.items():
        mp.setenv(k, v)
    get_settings.cache_clear()
    started: list[procs.ServerProcess] = []
    try:
        train(generate(20_000, seed=11), Settings(), TrainConfig(seed=11, mlp_epochs=1, save_to_bentoml=False))  # v1
        train(generate(20_000, seed=12), Settings(), TrainConfig(seed=12, mlp_epochs=1, save_to_bentoml=False))  # v2
        xgb = start_scorer("xgboost", session_dir, scorer_env(url, **NAMES), tag="-safe")
        started.append(xgb)
        urls = {"HEALMESH_XGB_URL": xgb.url, "HEALMESH_TORCH_URL": scorers["pytorch"].url,
                "HEALMESH_FALLBACK_URL": scorers["fallback"].url}
        gw = start_gateway(session_dir, redis_srv.port, urls, tag="safe")
        started.append(gw)
        airflow = Path(sys.executable).parent / "airflow"
        migrated = subprocess.run([str(airflow), "db", "migrate"], capture_output=True, text=True, timeout=300)
        assert migrated.returncode == 0, migrated.stdout[-2000:] + migrated.stderr[-2000:]
        fast = {"HEALMESH_GATEWAY_URL": gw.url, "HEALMESH_XGB_URL": xgb.url,
                "HEALMESH_REDIS_URL": local_redis_url(redis_srv.port), "HEALMESH_KEY_PREFIX": PREFIX,
                "HEALMESH_RETRAIN__MIN_LABELS": "500",
                # the gate is not under test here (but in test_too_few_positives_keep_the_champion and
                # the lifecycle module): every candidate of these 2,000 labels passes
                **PASS_EVERY_CANDIDATE,
                **FAST_CANARY,  # nor the judge's quality: v1 and v2 rank equally well
                # the stage mechanics (lease, slot, abort) are tried at stage 10; the shadow stage in
                # the lifecycle module
                "HEALMESH_CANARY__SHADOW": "false",
                "HEALMESH_CHALLENGER_POKE_S": "1", "HEALMESH_CHALLENGER_WAIT_S": "600",
                # read when the DAG file is parsed: short backoff for promote, room for MLflow to come back
                "HEALMESH_ROLLOUT__PROMOTE_RETRIES": "2", "HEALMESH_ROLLOUT__ROLLBACK_RETRIES": "12",
                "HEALMESH_ROLLOUT__RETRY_DELAY_S": "1", "HEALMESH_ROLLOUT__RETRY_MAX_DELAY_S": "10"}
        for k, v in fast.items():
            mp.setenv(k, v)
        get_settings.cache_clear()
        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(dag_folder=str(ROOT / "dags"))
        assert not bag.import_errors, bag.import_errors
        m = Mesh(gw.url, xgb.url, redis_srv.port, bag.dags, mlflow)
        yield m
        m.mp.undo()
    finally:
        for server in reversed(started):
            server.stop()
        mlflow["server"].stop()
        mp.undo()
        get_settings.cache_clear()


def test_the_lease_is_taken_extended_and_released_by_its_holder_only(redis_srv):
    import redis

    store = LeaseStore(redis.Redis(port=redis_srv.port), "hm-lease-test")
    first, second = Lease("canary_rollout/a", "4", 1.0), Lease("canary_rollout/b", "5", 2.0)
    assert store.acquire(first, ttl_s=60) == first and store.current() == first
    assert store.acquire(second, ttl_s=60) == first  # one rollout at a time
    assert store.acquire(first, ttl_s=60) == first  # the holder may take it again (a retried task)
    assert store.refresh("canary_rollout/b", ttl_s=1) == first and store.redis.pttl(store.key) > 1_000
    assert not store.release("canary_rollout/b") and store.current() == first
    assert store.release("canary_rollout/a") and store.current() is None
    assert store.refresh("canary_rollout/a", 60) is None
    store.acquire(second, ttl_s=60)
    assert store.break_() == second and store.current() is None


def test_a_retrain_waits_for_the_running_rollout_before_moving_the_challenger(mesh):
    """Item 6: a candidate that passes while a rollout holds the lease does not touch `challenger`
    until the lease is free; after HEALMESH_CHALLENGER_WAIT_S it stays registered without it."""
    sent = send_sync(mesh.gateway, 2_000, seed=21, batch=20)
    assert sent.answered == 2_000 and sent.labelled == 2_000
    registry.set_alias(mesh.settings, NAME, "challenger", "2")  # the version a rollout is testing
    leases = LeaseStore(mesh.redis(), PREFIX)
    running = Lease("canary_rollout/held-by-the-test", "2", time.time())
    assert leases.acquire(running, ttl_s=600) == running

    def release_once_waiting() -> tuple[str | None, str]:
        waiting = wait_for("challenger_waiting", lambda: mesh.events("challenger_waiting"))
        seen = mesh.alias("challenger")  # what the waiting candidate left in place
        assert leases.release(running.holder)
        return seen, waiting[0]["data"]["version"]

    watch = Watch(release_once_waiting)
    state, tasks, _ = mesh.run("retrain", {"trigger": "test"})
    seen, new = watch.result()
    assert state == "success" and tasks["announce_challenger"] == "success", tasks
    assert seen == "2" and new == "3" and mesh.alias("challenger") == "3"
    kinds = [e["kind"] for e in reversed(mesh.events()) if e["data"].get("version") == "3"]
    assert kinds == ["candidate_registered", "challenger_waiting", "challenger_registered"], kinds
    assert registry.version_info(mesh.settings, NAME, "3").tags["healmesh.challenger"] == "installed"

    # a rollout that outlasts the wait: v4 stays registered, tagged, without the alias
    mesh.setenv(HEALMESH_CHALLENGER_WAIT_S="3")
    try:
        assert leases.acquire(running, ttl_s=600) == running
        state, tasks, _ = mesh.run("retrain", {"trigger": "test", "seed": 1})
    finally:
        leases.release(running.holder)
        mesh.setenv(HEALMESH_CHALLENGER_WAIT_S="600")
    assert state == "failed" and tasks["install_challenger"] == "failed", tasks
    assert tasks["announce_challenger"] == "upstream_failed"
    assert mesh.alias("challenger") == "3"
    info = registry.version_info(mesh.settings, NAME, "4")
    assert info.tags["healmesh.challenger"] == "wait_timed_out"
    assert "stays registered without the challenger alias" in info.tags["healmesh.challenger_reason"]
    timed_out = mesh.events("challenger_wait_timed_out")
    assert timed_out and timed_out[0]["data"]["version"] == "4" and "held-by-the-test" in timed_out[0]["message"]


def test_too_few_positives_keep_the_champion_and_the_run_records_why(mesh):
    """Issue 11, item 1: a holdout with too few positives is "insufficient evidence", not a pass: nothing
    is registered, the aliases stay, and the MLflow run and the events say why."""
    from mlflow import MlflowClient

    challenger, champion = mesh.alias("challenger"), mesh.alias("champion")
    versions_before = len(MlflowClient(mesh.settings.tracking_uri).search_model_versions(f"name='{NAME}'"))
    mesh.setenv(HEALMESH_RETRAIN__GATE__MIN_POSITIVES="100000")
    try:
        state, tasks, _ = mesh.run("retrain", {"trigger": "test", "seed": 2})
    finally:
        mesh.setenv(HEALMESH_RETRAIN__GATE__MIN_POSITIVES=PASS_EVERY_CANDIDATE["HEALMESH_RETRAIN__GATE__MIN_POSITIVES"])
    assert state == "success" and tasks["train_and_judge"] == "success", tasks
    assert tasks["install_challenger"] == "skipped" and tasks["announce_challenger"] == "skipped", tasks
    client = MlflowClient(mesh.settings.tracking_uri)
    assert len(client.search_model_versions(f"name='{NAME}'")) == versions_before
    assert (mesh.alias("challenger"), mesh.alias("champion")) == (challenger, champion)
    kept = mesh.events("candidate_rejected")[0]
    assert kept["data"]["gate"] == "insufficient_evidence" and "champion kept" in kept["message"], kept
    run = client.get_run(kept["data"]["run_id"])
    assert run.data.tags["healmesh.gate"] == "insufficient_evidence"
    assert run.data.params["gate_outcome"] == "insufficient_evidence"
    assert run.data.params["gate_min_positives"] == "100000"
    assert "the gate needs at least 100000" in run.data.params["gate_reason"]
    assert 0 < run.data.metrics["gate_positives"] < 100_000 and "gate_ci_lower" not in run.data.metrics


# a stage that cannot pass for four minutes (the judge wants more canary samples than it will see)
NO_PASS_YET = {"HEALMESH_CANARY__JUDGE__MIN_PASS_SAMPLES": "1000000",
               "HEALMESH_CANARY__JUDGE__MAX_CANARY_CALLS": "1000000", "HEALMESH_CANARY__JUDGE__MAX_STAGE_S": "240"}
PASS_AGAIN = {"HEALMESH_CANARY__JUDGE__MIN_PASS_SAMPLES": "200",
              "HEALMESH_CANARY__JUDGE__MAX_CANARY_CALLS": "200000",
              "HEALMESH_CANARY__JUDGE__MAX_STAGE_S": FAST_CANARY["HEALMESH_CANARY__JUDGE__MAX_STAGE_S"]}


def test_a_stage_fails_when_its_canary_slot_changes_mid_stage(mesh):
    """Item 6: every check reads the scorer's canary slot; another version there fails the stage."""
    assert mesh.alias("challenger") == "3"
    mesh.setenv(**NO_PASS_YET)  # no pass before the swap

    def swap_the_challenger() -> dict[str, Any]:
        wait_for("stage 10 of v3", lambda: (r := mesh.rollout())["stage"] == 10 and r["status"] == "running"
                 and r["canary_version"] == "3")
        registry.set_alias(mesh.settings, NAME, "challenger", "2")  # what the old retrain did
        return httpx.post(mesh.xgb + "/admin/reload", headers=AUTH, timeout=60).json()["slots"]

    watch = Watch(swap_the_challenger)
    try:
        state, tasks, _ = mesh.run("canary_rollout")
    finally:
        mesh.setenv(**PASS_AGAIN)
    assert watch.result()["canary"]["version"] == "2"
    reason = "the XGBoost scorer's canary slot serves v2, not v3 under test"
    failed = mesh.events("stage_failed")[0]
    assert failed["data"]["version"] == "3" and reason in failed["message"], failed["message"]
    assert state == "failed" and tasks["stage_10"] == "failed" and tasks["rollback"] == "success", tasks
    assert tasks["outcome"] == "failed"
    rollout = mesh.rollout()
    assert rollout["status"] == "rolled_back" and rollout["stage"] == 0 and reason in rollout["note"]
    assert mesh.alias("challenger") == "2"  # not the rolled-back version's alias to remove
    assert LeaseStore(mesh.redis(), PREFIX).current() is None


def test_an_abort_rolls_back_now_and_the_running_stage_stops(mesh):
    """Item 6: `healmesh rollout abort --why` ends the rollout explicitly, with an event."""
    registry.set_alias(mesh.settings, NAME, "challenger", "2")
    mesh.setenv(**NO_PASS_YET)

    def abort_from_the_cli() -> subprocess.CompletedProcess[str]:
        wait_for("stage 10 of v2", lambda: mesh.rollout().get("status") == "running")
        return subprocess.run([sys.executable, "-m", "healmesh.ops.cli", "rollout", "abort",
                               "--why", "labels look wrong"], capture_output=True, text=True, timeout=120, cwd=ROOT)

    watch = Watch(abort_from_the_cli)
    try:
        state, tasks, _ = mesh.run("canary_rollout")
    finally:
        mesh.setenv(**PASS_AGAIN)
    done = watch.result()
    assert done.returncode == 0 and "aborted and rolled back" in done.stdout, done.stdout + done.stderr
    assert state == "failed" and tasks["stage_10"] == "failed" and tasks["rollback"] == "success", tasks
    aborted = mesh.events("rollout_aborted")[0]
    assert aborted["data"]["why"] == "labels look wrong" and aborted["data"]["who"].startswith("cli:")
    assert "lease is gone" in mesh.events("stage_failed")[0]["message"]
    rollout = mesh.rollout()
    assert rollout["status"] == "rolled_back" and rollout["stage"] == 0 and "labels look wrong" in rollout["note"]
    assert mesh.alias("challenger") is None and mesh.alias("champion") == "1"


def test_a_path_as_drift_check_id_is_refused_and_nothing_is_uploaded(mesh):
    """Item 13: the Param's pattern refuses the run before any task; nothing reaches MLflow."""
    from mlflow import MlflowClient

    client = MlflowClient(mesh.settings.tracking_uri)
    experiment = client.get_experiment_by_name(mesh.settings.experiment_name)
    runs_before = len(client.search_runs([experiment.experiment_id]))
    versions_before = len(client.search_model_versions(f"name='{NAME}'"))
    with pytest.raises(ValueError, match="drift_check_id") as refused:
        mesh.run("retrain", {"drift_check_id": "../../etc/passwd"})
    assert type(refused.value).__name__ == "ParamValidationError"
    assert len(client.search_runs([experiment.experiment_id])) == runs_before
    assert len(client.search_model_versions(f"name='{NAME}'")) == versions_before


def test_mlflow_down_at_promote_leaves_the_mesh_safe_and_the_rollout_failed(mesh):
    """Item 8: promote retries, then fails; rollback puts the mesh on the champion through the
    gateway at once (no MLflow needed), records the failure, and cleans the registry once MLflow
    is back."""
    registry.set_alias(mesh.settings, NAME, "challenger", "2")
    assert Scrape.parse(httpx.get(mesh.gateway + "/metrics", timeout=10).text).instances  # restarts are detectable

    failed_before = len(mesh.events("stage_failed"))

    def at_stage_100() -> bool:
        failed = mesh.events("stage_failed")
        if len(failed) > failed_before:  # say why at once rather than wait out the bound
            raise AssertionError(f"a stage failed before stage 100: {failed[0]['message']}")
        r = mesh.rollout()
        return bool(r["stage"] == 100 and r["status"] == "running")

    def take_mlflow_away_at_the_last_stage() -> dict[str, Any]:
        wait_for("stage 100", at_stage_100)
        server = mesh.mlflow["server"]
        procs.kill_tree(server.popen.pid)  # down at once, as a crash
        server.popen.wait(timeout=30)
        wait_for("rollout_failed", lambda: mesh.events("rollout_failed"), timeout=600)
        at_failure = mesh.rollout()  # the safe state, reached while MLflow is still down
        mesh.mlflow["server"] = procs.mlflow_server(mesh.mlflow["port"], mesh.mlflow["state"],
                                                    mesh.mlflow["logs"]).launch(timeout=180)
        return at_failure

    watch = Watch(take_mlflow_away_at_the_last_stage)
    with Background(mesh.gateway, chunk=200, concurrency=8) as bg:
        state, tasks, tries = mesh.run("canary_rollout")
    at_failure = watch.result()
    assert state == "failed", tasks
    assert tasks["stage_100"] == "success" and tasks["promote"] == "failed" and tries["promote"] == 3, (tasks, tries)
    assert tasks["rollback"] == "success" and tasks["outcome"] == "failed"
    assert at_failure["stage"] == 0 and at_failure["status"] == "failed"
    assert "promote of v2 failed (try 3)" in at_failure["note"], at_failure
    assert not bg.result.errors and bg.result.answered > 100, bg.result.errors  # clients never noticed
    rollout = mesh.rollout()
    assert rollout["status"] == "failed" and rollout["stage"] == 0 and rollout["canary_version"] is None
    assert [e["data"]["attempt"] for e in mesh.events("promote_failed")][:3] == [3, 2, 1]
    assert mesh.events("rollout_failed")[0]["data"]["version"] == "2" and mesh.events("registry_restored")
    assert mesh.alias("champion") == "1" and mesh.alias("challenger") is None
    assert registry.version_info(mesh.settings, NAME, "2").tags["healmesh.rollout"] == "failed"
    assert LeaseStore(mesh.redis(), PREFIX).current() is None
    failed_series = ("healmesh_rollout_info", frozenset({("status", "failed"), ("canary_version", "")}))
    wait_for("the series the failed-rollout alert reads", lambda: parse_metrics(
        httpx.get(mesh.gateway + "/metrics", timeout=10).text).get(failed_series) == 1.0, timeout=60)
    after = send_sync(mesh.gateway, 300, seed=31, batch=1, concurrency=8)
    assert not after.errors and {v for (m, v) in after.scored if m == "xgboost"} == {"1"}
