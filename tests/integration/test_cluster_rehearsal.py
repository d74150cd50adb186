"""The cluster rehearsal, `healmesh up --profile cluster`, seen from outside as a user runs it:
PostgreSQL metadata, MLflow serving artifacts, Airflow on Celery with two workers, two gateways
behind HAProxy, every process in a home of its own. `healmesh demo drift` runs the loop to a
promotion while a client sends traffic through the load balancer; on the way one gateway and the
Celery worker running a lifecycle task are SIGKILLed. Then the drift report is read through the
load balancer, and what every process had open during the run is checked against its home.

Seconds are printed (`-s`), not asserted; the deadlines only stop a test that would wait forever."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from healmesh.ops import postgres, procs
from healmesh.ops.cluster import NODES
from healmesh.ops.supervisor.client import Supervisor
from healmesh.ops.supervisor.spec import Spec
from healmesh.settings import Settings
from healmesh.urls import local_url

from .conftest import FAST_CANARY, PASS_EVERY_CANDIDATE, ROOT
from .load import transactions

# the fixture brings the whole rehearsal up (and trains) within the first test's time
pytestmark = [pytest.mark.integration, pytest.mark.timeout(2_400)]


def _two_free_ports() -> int:
    """A port whose successor is free too (the Celery workers' log servers take base and base + 1)."""
    for _ in range(200):
        base = procs.free_port()
        if not procs.port_open(base + 1):
            return base
    raise AssertionError("no two consecutive free ports")


@dataclass
class Cluster:
    home: Path
    env: dict[str, str]
    ports: dict[str, int]
    up_s: float = 0.0
    timeline: list[tuple[float, str]] = field(default_factory=list)

    @property
    def settings(self) -> Settings:
        """The rehearsal's settings as its processes see them (its env, not this test's)."""
        return Settings(home=self.home, cluster={
            "gateway_ports": json.loads(self.env["HEALMESH_CLUSTER__GATEWAY_PORTS"]),
            "s3_port": int(self.env["HEALMESH_CLUSTER__S3_PORT"])})

    @property
    def lb(self) -> str:
        return local_url(self.ports["gateway"])

    @property
    def supervisor(self) -> Supervisor:
        return Supervisor(self.home / "run")

    def cli(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "healmesh.ops.cli", *args], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def spec(self) -> Spec:
        return Spec.load(self.home / "run")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    home = tmp_path_factory.mktemp("cluster") / "home"
    ports = {name: procs.free_port() for name in ("gateway", "xgb", "torch", "fallback", "redis", "mlflow", "airflow")}
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALMESH_") and k != "MLFLOW_TRACKING_URI"}
    env.update({"HEALMESH_HOME": str(home), **{f"HEALMESH_{k.upper()}_PORT": str(v) for k, v in ports.items()},
                "HEALMESH_CLUSTER__GATEWAY_PORTS": json.dumps([procs.free_port(), procs.free_port()]),
                "HEALMESH_CLUSTER__WORKER_LOG_PORT": str(_two_free_ports()),
                "HEALMESH_CLUSTER__S3_PORT": str(procs.free_port()),
                # no scheduled drift check during the test (the demo triggers its own): once a year
                "HEALMESH_DRIFT_SCHEDULE": "0 0 1 1 *",
                # a loop in minutes: short canary stages, a gate every candidate passes (its subject
                # is elsewhere), a drift window the demo's traffic fills
                **FAST_CANARY, **PASS_EVERY_CANDIDATE,
                "HEALMESH_ROLLOUT__RETRY_DELAY_S": "2"})
    c = Cluster(home, env, ports)
    start = time.monotonic()
    done = c.cli("up", "--profile", "cluster", "--n", "20000")
    c.up_s = time.monotonic() - start
    print(f"\ncluster up in {c.up_s:.0f} s (training included)")
    try:
        assert done.returncode == 0, "stderr:\n" + done.stderr[-6000:] + "\nstdout:\n" + done.stdout[-3000:]
        yield c
    finally:
        c.cli("down", timeout=180)
        postgres.drop(c.settings)


# --- traffic through the load balancer, and what each process opens -----------------------------

class Client(threading.Thread):
    """8 clients sending predictions through the load balancer until told to stop (at most 50,000)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.stop, self.codes = url, threading.Event(), Counter[str]()
        self.bodies = transactions(50_000, seed=5)

    def run(self) -> None:
        def one(k: int) -> None:
            with httpx.Client(timeout=10) as client:
                for i in range(k, len(self.bodies), 8):
                    if self.stop.is_set():
                        return
                    try:
                        r = client.post(self.url + "/api/v1/predict", json=self.bodies[i])
                        self.codes[str(r.status_code)] += 1
                    except httpx.HTTPError as exc:
                        self.codes[type(exc).__name__] += 1
                    time.sleep(0.02)

        threads = [threading.Thread(target=one, args=(k,), daemon=True) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


class Watch(threading.Thread):
    """Every 2 s, for each program of the rehearsal and all its descendants: the working
    directory, the HEALMESH_HOME and AIRFLOW_HOME in its environment, and every file it has
    open. A path inside the mesh's home but outside the process's own node (another node, the
    supervisor's secrets, logs or run directory) is a finding."""

    def __init__(self, cluster: Cluster) -> None:
        super().__init__(daemon=True)
        self.cluster, self.stop = cluster, threading.Event()
        self.findings: set[str] = set()
        self.seen_files: Counter[str] = Counter()
        self.samples = 0

    def _check(self, program: str, node: Path, proc: psutil.Process) -> None:
        paths: list[tuple[str, str]] = [("cwd", proc.cwd())]
        environ = proc.environ()
        paths += [(k, environ[k]) for k in ("HOME", "HEALMESH_HOME", "AIRFLOW_HOME", "BENTOML_HOME", "TMPDIR",
                                            "HEALMESH_REDIS_PASSWORD_FILE") if k in environ]
        paths += [("open", f.path) for f in proc.open_files()]
        for what, path in paths:
            p = Path(path)
            if p.is_relative_to(self.cluster.home) and not p.is_relative_to(node):
                self.findings.add(f"{program} (pid {proc.pid}) {what} {path}")
            if what == "open" and p.is_relative_to(node):
                self.seen_files[program] += 1

    def run(self) -> None:
        spec = self.cluster.spec()
        sup = self.cluster.supervisor
        while not self.stop.wait(2.0):
            for program in spec.programs:
                if program.cwd is None or not Path(program.cwd).is_relative_to(self.cluster.home / NODES):
                    continue  # Redis: a server of its own, not a node of the rehearsal
                for pid in sup.pids(program.name):
                    for proc in procs.process_tree(pid):
                        try:
                            self._check(program.name, Path(program.cwd), proc)
                        except (psutil.Error, OSError):
                            continue  # gone meanwhile
            self.samples += 1


# --- the loop --------------------------------------------------------------------------------------

def _airflow(cluster: Cluster) -> Any:
    from healmesh.lifecycle.airflow_api import AirflowClient

    password = json.loads((cluster.home / NODES / "airflow-api-server" / "airflow" /
                           "simple_auth_manager_passwords.json.generated").read_text())["admin"]
    return AirflowClient(local_url(cluster.ports["airflow"]), "admin", password)


def _running_task(af: Any, dag_id: str) -> tuple[str, str, str, int] | None:
    """(run id, task id, task instance id, try number) of a running task of the newest run of
    ``dag_id``."""
    for run in af.runs(dag_id, limit=1):
        tis = af._req("GET", f"/dags/{dag_id}/dagRuns/{run['dag_run_id']}/taskInstances")["task_instances"]
        for ti in tis:
            if ti["state"] == "running":
                return run["dag_run_id"], ti["task_id"], ti["id"], ti["try_number"]
    return None


def _worker_running(cluster: Cluster, ti_id: str) -> tuple[str, int] | None:
    """(program, pid) of the Celery worker whose process tree runs task instance ``ti_id`` now.
    The task's own process is titled ``airflow worker -- <ti id>`` while it runs; the pool process
    that supervised it keeps its ``airflow supervisor: <ti id>`` title after a delivery it did not
    run (a duplicate the API refused), so only the first title says where the task runs."""
    title = f"airflow worker -- {ti_id}"
    for name in ("celery-worker-1", "celery-worker-2"):
        for pid in cluster.supervisor.pids(name):
            for proc in procs.process_tree(pid):
                try:
                    if " ".join(proc.cmdline()).startswith(title):
                        return name, pid
                except psutil.Error:
                    continue
    return None


def test_the_drift_loop_runs_to_promotion_through_a_killed_gateway_and_a_killed_worker(cluster):
    spec = cluster.spec()
    names = {p.name for p in spec.programs}
    assert {"lb", "gateway-1", "gateway-2", "celery-worker-1", "celery-worker-2", "airflow-scheduler",
            "airflow-dag-processor", "airflow-api-server", "mlflow", "s3", "archiver"} <= names, names
    client, watch = Client(cluster.lb), Watch(cluster)
    client.start()
    watch.start()
    t0 = time.monotonic()
    demo = subprocess.Popen([sys.executable, "-m", "healmesh.ops.cli", "demo", "drift", "--n", "6000",
                             "--timeout", "900"], cwd=ROOT, env=cluster.env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.extend(demo.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    af = None
    killed: dict[str, float] = {}
    killed_try: tuple[str, str, str, int] | None = None
    before_kill: Counter[str] = Counter()
    try:
        deadline = time.monotonic() + 1_500
        while demo.poll() is None:
            assert time.monotonic() < deadline, "demo drift did not end:\n" + "".join(out[-40:])
            time.sleep(1.0)
            try:  # Airflow's API answers slowly while the loop loads the two cores: ask again next second
                af = af or _airflow(cluster)
            except httpx.HTTPError:
                continue
            if "gateway" not in killed and any("drift_monitor triggered" in line for line in out):
                before_kill = Counter(client.codes)
                (pid,) = cluster.supervisor.pids("gateway-1")
                assert procs.kill_tree(pid)
                killed["gateway"] = time.monotonic() - t0
                print(f"[{killed['gateway']:6.1f}s] SIGKILL gateway-1 (pid {pid}); client so far {dict(before_kill)}")
            try:
                running = None if "worker" in killed else _running_task(af, "retrain")
            except httpx.HTTPError:
                continue
            if running and (worker := _worker_running(cluster, running[2])):
                (run_id, task, _, try_number), (name, pid) = running, worker
                tree = procs.process_tree(pid)  # one snapshot: killed, then waited for
                assert tree
                procs.signal_all(tree, signal.SIGKILL)
                killed["worker"] = time.monotonic() - t0
                killed_try = running
                _, alive = psutil.wait_procs(tree, timeout=10)
                assert not alive, f"the worker's processes outlived SIGKILL: {alive}"
                print(f"[{killed['worker']:6.1f}s] SIGKILL {name} (pid {pid}, {len(tree)} processes) while it "
                      f"ran retrain.{task} try {try_number} of {run_id}")
    finally:
        client.stop.set()
        watch.stop.set()
        if demo.poll() is None:
            demo.kill()
        client.join(60)
        watch.join(60)
        reader.join(10)
    loop_s = time.monotonic() - t0
    text = "".join(out)
    print(text[-3000:])
    print(f"loop {loop_s:.0f} s; client answers {dict(client.codes)}; watched {watch.samples} times")
    assert demo.returncode == 0, text[-4000:]
    assert '"promoted": true' in text, text[-4000:]
    assert set(killed) == {"gateway", "worker"}, f"the kills did not both happen: {killed}"
    # HAProxy retried what the killed gateway dropped: no client saw an error (8 clients: at most
    # 8 requests were in flight when it died; the claim is stronger than that bound)
    errors = {k: v for k, v in client.codes.items() if k != "200"}
    assert sum(errors.values()) <= 8, errors
    assert client.codes["200"] > 500
    # the killed worker's task ran again: its try failed, a later try of it succeeded, the run too
    assert killed_try is not None
    run_id, task, _, try_number = killed_try
    retrain = af.run("retrain", run_id)
    history = af._req("GET", f"/dags/retrain/dagRuns/{run_id}/taskInstances/{task}/tries")["task_instances"]
    states = {h["try_number"]: h["state"] for h in history}
    tries = {ti["task_id"]: ti["try_number"] for ti in af._req(
        "GET", f"/dags/retrain/dagRuns/{run_id}/taskInstances")["task_instances"]}
    assert retrain["state"] == "success", (retrain["state"], states, tries)
    assert states.get(try_number) == "failed" and states.get(max(states)) == "success" and max(states) > try_number, \
        (try_number, states, tries)
    print(f"retrain run {retrain['start_date']} -> {retrain['end_date']}, tries {tries}; gateway-1 restarts: "
          f"{len(cluster.supervisor.pids('gateway-1'))} process now, killed at {killed['gateway']:.0f} s")
    print("retrain." + task + " tries: " + "; ".join(
        f"{h['try_number']} {h['state']} {h['start_date']} -> {h['end_date']}" for h in history))
    # both gateways serve again (the supervisor restarted the killed one)
    for port in json.loads(cluster.env["HEALMESH_CLUSTER__GATEWAY_PORTS"]):
        assert procs.answers(port, "/readyz", timeout=10), port
    assert not watch.findings, "a process of the rehearsal touched another's home:\n" + "\n".join(
        sorted(watch.findings))
    assert watch.samples >= 10 and len(watch.seen_files) >= 5, (watch.samples, dict(watch.seen_files))
    # the feature log and the labels went to the archive on the S3 server, as hourly Parquet parts
    from healmesh.data.objects import open_store
    from healmesh.ops.cluster import archive_env

    env = archive_env(cluster.settings)
    store = open_store(env["HEALMESH_ARCHIVE__URL"], endpoint_url=env["HEALMESH_ARCHIVE__ENDPOINT_URL"],
                       access_key_id=env["AWS_ACCESS_KEY_ID"], secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    parts = store.list("")
    assert any(k.startswith("features/") and k.endswith(".parquet") for k in parts), parts[:10]
    assert any(k.startswith("labels/") and k.endswith(".parquet") for k in parts), parts[:10]


def test_the_drift_report_is_served_through_the_load_balancer_by_either_gateway(cluster):
    """After the loop: the report the drift check wrote inside a Celery worker's home opens from
    /ui through the load balancer and from each gateway directly: none of them can see that home."""
    index = httpx.get(cluster.lb + "/ui/reports/index.html", timeout=30)
    assert index.status_code == 200, index.text[:500]
    import re

    names = re.findall(r'href="([0-9]{8}T[0-9]{6}Z_v[^"/]+\.html)"', index.text)
    assert names, index.text[:2000]
    for base in [cluster.lb, *(local_url(p) for p in json.loads(cluster.env["HEALMESH_CLUSTER__GATEWAY_PORTS"]))]:
        page = httpx.get(f"{base}/ui/reports/{names[0]}", timeout=30)
        assert page.status_code == 200 and "healmesh decision" in page.text, (base, page.status_code)
    # and no gateway's home holds a copy: the report came from MLflow
    for gateway in ("gateway-1", "gateway-2"):
        assert not list((cluster.home / NODES / gateway).rglob(names[0])), gateway


def test_every_process_has_its_own_home_and_metadata_lives_in_postgresql(cluster):
    spec = cluster.spec()
    homes = {}
    for program in spec.programs:
        if program.name.startswith("redis"):
            continue
        node = cluster.home / NODES / program.name
        assert program.cwd == str(node), (program.name, program.cwd)
        assert program.env.get("HEALMESH_HOME") == str(node), program.name
        assert not str(program.cwd).startswith(str(ROOT)), program.name
        homes[program.name] = node
        assert node.stat().st_mode & 0o077 == 0, f"{node} is open to others"
    assert len(set(homes.values())) == len(homes)
    # the secrets a process needs are its own copies, not paths into the supervisor's home
    for program in spec.programs:
        for key, value in program.env.items():
            if key.endswith("_FILE") and value.startswith(str(cluster.home)):
                assert Path(value).is_relative_to(homes.get(program.name, Path("/nonexistent"))), (program.name, key)
    airflow = spec.program("airflow-scheduler").env
    assert airflow["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert airflow["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg://")
    assert spec.program("mlflow").env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg://")
    assert not any("postgresql" in arg for p in spec.programs for arg in p.argv), "a password in argv"
    # the metadata is in PostgreSQL: the rehearsal's databases hold Airflow's DAG runs and MLflow's versions
    import psycopg

    for purpose, query in (("airflow", "SELECT count(*) FROM dag_run"),
                           ("mlflow", "SELECT count(*) FROM model_versions")):
        name = postgres.database_name(cluster.settings, purpose)
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{name}") as conn:
            (count,) = conn.execute(query).fetchone()
        assert count >= 1, (purpose, count)
