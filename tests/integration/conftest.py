"""Real processes for integration tests: an MLflow tracking server, trained models, and
scorers served by `bentoml serve`. All on 127.0.0.1 and free ports; all stopped afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import redis

from healmesh import credentials, redis_conn
from healmesh.ops import procs
from healmesh.ops.supervisor.client import Supervisor
from healmesh.settings import Settings
from healmesh.urls import local_redis_url, local_url

ROOT = Path(__file__).resolve().parents[2]
TOKEN = os.environ["HEALMESH_ADMIN_TOKEN"]
# A canary the sequential judge decides in seconds, for the tests whose subject is not quality: error
# rate and latency must be proven no worse (error margin +1 %, the default; latency a 2x ratio of
# geometric means, wide enough for a busy CI host's stalls, far below a 300 ms fault); quality is
# judged when there is evidence but not required, with a 0.2 AUC margin: estimates (CBPE) of two
# equal models differ by their calibration, and a stage that passes on errors and latency would
# otherwise wait for thousands of labels to prove a 1-point margin (bench/results/decisions.md).
# The test of a worse model sets quality back to required.
FAST_CANARY = {"HEALMESH_CANARY__CHECK_EVERY_S": "1", "HEALMESH_CANARY__JUDGE__REQUIRE_QUALITY": "false",
               "HEALMESH_CANARY__JUDGE__AUC_MARGIN": "0.2", "HEALMESH_CANARY__JUDGE__LATENCY_MARGIN": "0.693",
               "HEALMESH_CANARY__JUDGE__MAX_STAGE_S": "120"}
# a retrain gate every candidate passes (two of each class, a margin wider than any AUC gap, the floor
# at chance), for the tests whose subject is what happens after the gate
PASS_EVERY_CANDIDATE = {"HEALMESH_RETRAIN__GATE__MARGIN": "0.49", "HEALMESH_RETRAIN__GATE__FLOOR": "0.5",
                        "HEALMESH_RETRAIN__GATE__MIN_POSITIVES": "2", "HEALMESH_RETRAIN__GATE__MIN_NEGATIVES": "2"}
LABELLER_TOKEN = os.environ["HEALMESH_LABELLER_TOKEN"]


@pytest.fixture(scope="session")
def mlflow_url(session_dir: Path) -> Iterator[str]:
    server = procs.mlflow_server(procs.free_port(), session_dir / "mlflow-server", session_dir / "logs")
    server.start()
    try:
        server.wait_ready(timeout=120)
        os.environ["MLFLOW_TRACKING_URI"] = server.url
        yield server.url
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        server.stop()


@pytest.fixture(scope="session")
def settings(mlflow_url: str) -> Settings:
    return Settings()


@pytest.fixture(scope="session")
def trained(settings: Settings, artifacts_dir: Path):
    """Version 1 of both models, registered as champion on the real MLflow server."""
    import json

    from healmesh.data import generate
    from healmesh.training import TrainConfig, train

    report = train(generate(60_000, seed=0), settings, TrainConfig(seed=0, mlp_epochs=15))
    (artifacts_dir / "train_report.json").write_text(json.dumps(report.to_dict(), indent=2))
    return report


def scorer_env(mlflow_url: str, **extra: str) -> dict[str, str]:
    return {"MLFLOW_TRACKING_URI": mlflow_url, "HEALMESH_ADMIN_TOKEN": TOKEN, "HEALMESH_ALIAS_POLL_S": "1",
            **extra}


def start_scorer(name: str, session_dir: Path, env: dict[str, str], tag: str = "") -> procs.ServerProcess:
    return procs.bentoml_server(f"{name}{tag}", procs.SCORERS[name], procs.free_port(), session_dir / "logs",
                                env=env, cwd=ROOT).launch()


@pytest.fixture(scope="session")
def scorers(trained, mlflow_url: str, session_dir: Path) -> Iterator[dict[str, procs.ServerProcess]]:
    started: dict[str, procs.ServerProcess] = {}
    try:
        for name in procs.SCORERS:
            started[name] = start_scorer(name, session_dir, scorer_env(mlflow_url))
        yield started
    finally:
        for server in started.values():
            server.stop()


# --- the gateway ---------------------------------------------------------------------------

GATEWAY_FAST = {  # breakers and ramps that move in seconds, so tests need not wait minutes
    "HEALMESH_BREAKER__OPEN_WAIT_S": "2", "HEALMESH_BREAKER__RAMP_STEP_S": "1", "HEALMESH_PROBE_INTERVAL_S": "0.5",
    "HEALMESH_BREAKER__CONSECUTIVE_FAILURES": "5",
}


def start_redis(session_dir: Path, persist: bool = False, port: int | None = None) -> procs.ServerProcess:
    port = port or procs.free_port()
    server = procs.redis_server(port, session_dir / f"redis-{port}", session_dir / "logs", persist=persist)
    return server.launch(timeout=20)


def scorer_urls(scorers: dict[str, procs.ServerProcess]) -> dict[str, str]:
    return {"HEALMESH_XGB_URL": scorers["xgboost"].url, "HEALMESH_TORCH_URL": scorers["pytorch"].url,
            "HEALMESH_FALLBACK_URL": scorers["fallback"].url}


def start_gateway(session_dir: Path, redis_port: int, urls: dict[str, str], tag: str,
                  **extra: str) -> procs.ServerProcess:
    env = {"HEALMESH_REDIS_URL": local_redis_url(redis_port), "HEALMESH_ADMIN_TOKEN": TOKEN,
           "HEALMESH_KEY_PREFIX": f"hm-{tag}", **GATEWAY_FAST, **urls, **extra}
    return procs.bentoml_server(f"gateway-{tag}", "gateway.service:Gateway", procs.free_port(),
                                session_dir / "logs", env=env, cwd=ROOT).launch()


def worker_pids(server_pid: int) -> set[int]:
    """The pids of a BentoML server's service workers (children of its arbiter)."""
    out = set()
    for proc in procs.process_tree(server_pid)[1:]:
        try:
            if "_bentoml_impl.worker.service" in proc.cmdline():
                out.add(proc.pid)
        except psutil.Error:  # gone meanwhile
            continue
    return out


def each_worker(url: str, path: str, workers: int, timeout: float = 30.0,
                headers: dict[str, str] | None = None) -> dict[str, httpx.Response]:
    """GET ``path`` on fresh connections until ``workers`` different workers of the server have
    answered (the ``x-healmesh-worker`` header): the last answer of each, by instance id. The
    kernel hands each new connection to whichever worker accepts first, so a few tries reach all."""
    seen: dict[str, httpx.Response] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < workers:
        assert time.monotonic() < deadline, f"only {len(seen)} of {workers} workers answered {path} in {timeout}s"
        r = httpx.get(url + path, headers={"Authorization": f"Bearer {TOKEN}", **(headers or {})}, timeout=10)
        r.raise_for_status()
        seen[r.headers["x-healmesh-worker"]] = r
    return seen


def worker_states(server: procs.ServerProcess, timeout: float = 30.0) -> dict[str, dict]:
    """``GET /api/v1/admin/state`` of every worker of a gateway server, by instance id."""
    n = len(worker_pids(server.popen.pid)) if server.popen is not None else 1
    return {k: r.json() for k, r in each_worker(server.url, "/api/v1/admin/state", max(1, n), timeout).items()}


@pytest.fixture(scope="session")
def redis_srv(session_dir: Path) -> Iterator[procs.ServerProcess]:
    server = start_redis(session_dir)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(scorers, redis_srv, session_dir: Path) -> Iterator[procs.ServerProcess]:
    server = start_gateway(session_dir, redis_srv.port, scorer_urls(scorers), tag="main")
    yield server
    server.stop()


def publish_drift(redis_port: int, prefix: str = "hm-main") -> None:
    """Write a drift result into the control state, through the store the drift check uses."""
    import redis

    from healmesh.control.state import DriftSummary
    from healmesh.control.sync_store import SyncControlStore

    client = redis.Redis(port=redis_port)
    try:
        SyncControlStore(client, prefix).publish_drift(DriftSummary(
            checked_at=1_700_000_000.0, model_version="1", window_size=5000, decision="drift", share_drifted=0.25,
            scores={"amount": {"psi": 0.31, "ks": 0.2}}))
    finally:
        client.close()


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The sum of the samples ``name`` with (at least) these labels in a Prometheus text exposition;
    ``None`` when there is none."""
    from prometheus_client.parser import text_string_to_metric_families

    found = [float(sample.value) for family in text_string_to_metric_families(text) for sample in family.samples
             if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())]
    return sum(found) if found else None


def poll(predicate, timeout: float, what: str, interval: float = 0.2):
    """``predicate()``'s first truthy answer within ``timeout`` seconds, else an assertion error."""
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(interval)


# --- a mesh as `make up` starts it ------------------------------------------------------------------

@dataclass
class UpMesh:
    """A mesh started by `healmesh up --no-airflow` in a private HEALMESH_HOME on free ports (its own
    Redis behind a generated password, tokens generated into 0600 files), seen from outside as a
    user sees it. MLflow is the session's."""

    home: Path
    env: dict[str, str]
    ports: dict[str, int]

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def supervisor(self) -> Supervisor:
        return Supervisor(self.run_dir)

    @property
    def settings(self) -> Settings:
        return Settings(home=self.home, admin_token=None, labeller_token=None,
                        **{f"{k}_port": v for k, v in self.ports.items()})

    def url(self, name: str) -> str:
        return local_url(self.ports[name])

    @property
    def admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {credentials.admin_token(self.settings)}"}

    @property
    def labeller(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {credentials.labeller_token(self.settings)}"}

    def redis(self) -> redis.Redis:
        return redis_conn.sync_client(self.settings)

    def pid(self, name: str) -> int:
        """The pid of a program of the mesh, as its supervisor knows it."""
        return self.supervisor.pids(name)[0]

    def gateway_states(self) -> list[dict[str, Any]]:
        """``GET /api/v1/admin/state`` of every gateway worker (each answers for itself)."""
        workers = max(1, len(worker_pids(self.pid("gateway"))))
        answers = each_worker(self.url("gateway"), "/api/v1/admin/state", workers, headers=self.admin)
        return [r.json() for r in answers.values()]

    def cli(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "healmesh.ops.cli", *args], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def ours(self) -> list[psutil.Process]:
        """Every process of this mesh still alive: its supervisor with all its descendants, and
        whatever the supervisor would take for one of its programs (whatever session it runs in)."""
        from healmesh.ops.supervisor import daemon
        from healmesh.ops.supervisor.spec import Spec

        found: dict[int, psutil.Process] = {}
        if pid := self.supervisor.pid():
            root = psutil.Process(pid)
            found.update({p.pid: p for p in [root, *root.children(recursive=True)]})
        spec = Spec.load(self.run_dir)
        for program in spec.programs:
            found.update({p.pid: p for p in daemon.leftovers(spec.run_dir, program)})
        return list(found.values())


@pytest.fixture(scope="module")
def up_mesh(trained, mlflow_url: str, tmp_path_factory) -> Iterator[UpMesh]:
    """`healmesh up --no-airflow` for a test module; `healmesh down` after it."""
    home = tmp_path_factory.mktemp("up") / "home"
    ports = {name: procs.free_port() for name in ("gateway", "xgb", "torch", "fallback", "redis", "mlflow", "airflow",
                                                     "prometheus", "alertmanager")}
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("HEALMESH_") or k == "HEALMESH_DRIFT_REPORTS_DIR"}  # no tokens, no Redis URL
    env.update({"HEALMESH_HOME": str(home), "MLFLOW_TRACKING_URI": mlflow_url,
                **{f"HEALMESH_{k.upper()}_PORT": str(v) for k, v in ports.items()}})
    mesh = UpMesh(home, env, ports)
    try:
        done = mesh.cli("up", "--no-airflow")
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        yield mesh
    finally:
        mesh.cli("down", timeout=180)
