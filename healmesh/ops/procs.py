"""Starting and stopping local servers (scorers, Redis, MLflow...) for `healmesh up`, tests
and benchmarks. Each server runs in its own process group so that stopping it also stops
the workers it forked (BentoML's circus arbiter and its workers)."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from healmesh.credentials import private_dir, write_secret
from healmesh.errors import HealmeshError
from healmesh.policies.probing import Probe
from healmesh.settings import get_settings
from healmesh.urls import LOCALHOST, local_address, local_url

EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_handed_out: set[int] = set()


def spare_ports(ephemeral: tuple[int, int] | None = None) -> range:
    """Ports the kernel never picks by itself: those outside its ephemeral range (``ephemeral``,
    default read from net.ipv4.ip_local_port_range), from 10000 up. Empty when none is left."""
    if ephemeral is None:
        try:
            low, high = (int(x) for x in EPHEMERAL_RANGE_FILE.read_text().split())
        except (OSError, ValueError):
            low, high = 32768, 60999  # Linux's default
    else:
        low, high = ephemeral
    if low - 10_000 >= 1_000:
        return range(10_000, low)
    if 65_535 - high >= 1_000:
        return range(high + 1, 65_536)
    return range(0)


def free_port() -> int:
    """A port free now on 127.0.0.1, for a server started later. Not from the kernel's ephemeral
    range: a port picked there and released meanwhile can go to any process's bind(0) or outgoing
    connection (BentoML's arbiters pick theirs that way; a landing CI run saw Alertmanager fail to
    bind the port a test had picked for it, "address already in use"), nor one this process handed
    out before (two servers started later would get the same)."""
    spare = spare_ports()
    for _ in range(500):
        port = random.choice(spare) if spare else 0
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind((LOCALHOST, port))
            except OSError:
                continue
            port = int(s.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise ServerFailed("no free port on 127.0.0.1")


def port_open(port: int, host: str = LOCALHOST) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def answers(port: int, ready_path: str | None, timeout: float = 2.0) -> bool:
    """The one readiness probe (`up`, `status`, the supervisor and the tests): GET ``ready_path``
    on the local port answers 200; without a path (Redis), the port accepts connections."""
    return probe(port, ready_path, timeout).ok


def probe(port: int, ready_path: str | None, timeout: float = 2.0) -> Probe:
    """``answers`` with how it failed, worded for a person."""
    if not ready_path:
        return Probe(True) if port_open(port) else Probe(False, f"port {port} accepts no connection")
    url = local_url(port, ready_path)
    try:
        code = httpx.get(url, timeout=timeout).status_code
    except httpx.TimeoutException:
        return Probe(False, f"GET {url} timed out after {timeout:g} s")
    except httpx.ConnectError:
        return Probe(False, f"GET {url}: connection refused")
    except httpx.HTTPError as exc:
        return Probe(False, f"GET {url}: {type(exc).__name__}: {exc}")
    return Probe(True) if code == 200 else Probe(False, f"GET {url} answered {code}")


def process_tree(pid: int) -> list[psutil.Process]:
    """The process and all its descendants. BentoML's workers run in process groups of their
    own: killing the arbiter's group alone leaves them serving on the inherited socket."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def signal_all(tree: Sequence[psutil.Process], sig: int) -> None:
    for proc in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(sig)


def terminate_tree(pid: int, timeout: float) -> None:
    """Stop a server: SIGTERM to the group ``pid`` leads (BentoML's arbiter stops its workers
    gracefully), up to ``timeout`` seconds for the leader to exit, then SIGKILL to whatever
    of the tree, taken before, is still there: workers in process groups of their own."""
    tree = process_tree(pid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    psutil.wait_procs(tree[:1], timeout=timeout)
    signal_all(tree, signal.SIGKILL)


def kill_tree(pid: int) -> bool:
    """SIGKILL a process and every descendant at once, as a crash of the host would. False if
    nothing ran."""
    tree = process_tree(pid)
    signal_all(tree, signal.SIGKILL)
    return bool(tree)


class ServerFailed(HealmeshError, RuntimeError):
    """A local server did not start or did not get ready."""


# every server started here: files it creates are readable by its owner only
PRIVATE_UMASK = 0o077


def open_private_log(path: Path) -> int:
    """A file descriptor appending to ``path``, created 0600 (an older, wider log is narrowed):
    server logs can hold what nobody else should read."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    if stat.S_ISREG(os.fstat(fd).st_mode):
        os.fchmod(fd, 0o600)
    return fd


@dataclass
class ServerProcess:
    name: str
    cmd: Sequence[str]
    port: int
    log_path: Path
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    ready_path: str = "/readyz"
    popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return local_url(self.port)

    def start(self) -> ServerProcess:
        log = open_private_log(self.log_path)
        try:
            # umask: whatever the server writes (Airflow's config and logs, Redis's append-only
            # file, BentoML's state) is its owner's alone
            self.popen = subprocess.Popen(list(self.cmd), stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd,
                                          env={**os.environ, **self.env}, start_new_session=True, umask=PRIVATE_UMASK)
        finally:
            os.close(log)
        return self

    def wait_ready(self, timeout: float = 90.0) -> ServerProcess:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen is not None and self.popen.poll() is not None:
                raise ServerFailed(f"{self.name} exited with {self.popen.returncode}:\n{self.log_tail()}")
            if self._answers():
                return self
            time.sleep(0.2)
        raise ServerFailed(f"{self.name} not ready on port {self.port} after {timeout:.0f}s:\n{self.log_tail()}")

    def _answers(self) -> bool:
        return answers(self.port, self.ready_path)

    def launch(self, timeout: float = 120.0) -> ServerProcess:
        """Start and wait until ready; a server that never gets ready is stopped again."""
        self.start()
        try:
            return self.wait_ready(timeout=timeout)
        except Exception:
            self.stop()
            raise

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen is None:
            return
        terminate_tree(self.popen.pid, timeout)
        self.popen.wait(timeout=5)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def bentoml_home() -> Path:
    return Path(os.environ.get("BENTOML_HOME") or Path.home() / "bentoml")


def private_bentoml_home(name: str, state_dir: Path, shared_models: bool = True) -> Path:
    """A BENTOML_HOME for one server that shares the real model store.

    Every `bentoml serve` wipes and reuses ``$BENTOML_HOME/prometheus_multiproc_dir``: two
    servers on one host with the same home delete and mix each other's metrics. A home of its
    own (its ``models`` a link to the shared store) keeps each server's metrics its own.
    """
    home = state_dir / f"bentoml-{name}"
    home.mkdir(parents=True, exist_ok=True)
    if not shared_models:  # the cluster rehearsal: models from the MLflow registry only
        return home
    shared = bentoml_home() / "models"
    shared.mkdir(parents=True, exist_ok=True)
    link = home / "models"
    if link.is_symlink() and link.resolve() != shared.resolve():
        link.unlink()
    if not link.exists():
        link.symlink_to(shared, target_is_directory=True)
    return home


def bentoml_server(name: str, target: str, port: int, log_dir: Path, env: Mapping[str, str] | None = None,
                   cwd: Path | None = None, shared_models: bool = True) -> ServerProcess:
    """`bentoml serve <target> -p <port>` on 127.0.0.1, from the same interpreter, with its own
    metrics directory (see ``private_bentoml_home``)."""
    cmd = [sys.executable, "-m", "bentoml", "serve", target, "--host", LOCALHOST, "-p", str(port),
           "--timeout-keep-alive", str(get_settings().server_keep_alive_s)]
    home = private_bentoml_home(name, log_dir.parent / "bentoml-homes", shared_models)
    return ServerProcess(name=name, cmd=cmd, port=port, log_path=log_dir / f"{name}.log",
                         env={**(env or {}), "BENTOML_HOME": str(home)}, cwd=cwd)


SCORERS: dict[str, str] = {
    "xgboost": "bentos.xgboost_scorer:XGBoostScorer",
    "pytorch": "bentos.torch_scorer:TorchScorer",
    "fallback": "bentos.fallback_scorer:FallbackScorer",
}


def mlflow_server(port: int, state_dir: Path, log_dir: Path, backend_uri: str | None = None,
                  artifacts: Path | None = None) -> ServerProcess:
    """An MLflow tracking server: SQLite (``state_dir/mlflow.db``) unless ``backend_uri`` (for
    example a PostgreSQL URI) is given. It proxies artifacts (``mlflow-artifacts:/`` URIs for new
    experiments), stored under ``artifacts``: clients read and write them over HTTP, never from a
    shared folder, so the scorers, the Airflow workers and the gateway need not share a disk with
    it, and an S3/MinIO ``--artifacts-destination`` works the same in a cluster. Experiments made
    before by a server without the proxy keep their file:// location."""
    state_dir.mkdir(parents=True, exist_ok=True)
    backend = backend_uri or f"sqlite:///{state_dir / 'mlflow.db'}"
    root = artifacts or state_dir / "artifacts"
    root.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", LOCALHOST, "--port", str(port),
           "--backend-store-uri", backend, "--serve-artifacts", "--artifacts-destination", root.as_uri(),
           "--workers", "1"]
    return ServerProcess(name="mlflow", cmd=cmd, port=port, log_path=log_dir / "mlflow.log", ready_path="/health")


def _binary(*names: str, package: str) -> str:
    import shutil

    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise ServerFailed(f"{' / '.join(names)} not found: apt-get install {package}")


def prometheus_server(port: int, state_dir: Path, log_dir: Path, config_path: Path, *,
                      retention: str = "7d") -> ServerProcess:
    """A Prometheus on 127.0.0.1:``port`` with ``config_path`` (see healmesh.ops.alerting for the
    local mesh's), its TSDB under ``state_dir/data`` kept ``retention``."""
    binary = _binary("prometheus", package="prometheus")
    data = private_dir(state_dir) / "data"
    cmd = [binary, f"--config.file={config_path}", f"--storage.tsdb.path={data}",
           f"--storage.tsdb.retention.time={retention}", f"--web.listen-address={local_address(port)}",
           f"--web.external-url={local_url(port)}"]
    return ServerProcess(name="prometheus", cmd=cmd, port=port, log_path=log_dir / "prometheus.log",
                         ready_path="/-/ready")


def alertmanager_server(port: int, state_dir: Path, log_dir: Path, config_path: Path) -> ServerProcess:
    """An Alertmanager on 127.0.0.1:``port`` with ``config_path``, its silences and notification
    log under ``state_dir/data``. Clustering (gossip on 0.0.0.0:9094 by default) is off: one
    Alertmanager, nothing else listening."""
    binary = _binary("prometheus-alertmanager", "alertmanager", package="prometheus-alertmanager")
    data = private_dir(state_dir) / "data"
    cmd = [binary, f"--config.file={config_path}", f"--storage.path={data}",
           f"--web.listen-address={local_address(port)}", f"--web.external-url={local_url(port)}",
           "--cluster.listen-address="]
    return ServerProcess(name="alertmanager", cmd=cmd, port=port, log_path=log_dir / "alertmanager.log",
                         ready_path="/-/ready")


@dataclass(frozen=True)
class RedisConfig:
    """What a Redis started here runs with. It goes to redis-server as a config file made 0600,
    never as arguments: ``ps`` shows every process's arguments to every user."""

    port: int
    state_dir: Path
    password: str | None = None
    persist: bool = False
    appendfsync: str = "always"
    maxmemory: str = "0"
    maxmemory_policy: str = "noeviction"

    def render(self) -> str:
        lines = [f"port {self.port}", f"bind {LOCALHOST}", "protected-mode yes", "daemonize no", 'logfile ""',
                 f"dir {_quote(str(self.state_dir))}", 'save ""',
                 f"appendonly {'yes' if self.persist else 'no'}", f"appendfsync {self.appendfsync}",
                 f"maxmemory {self.maxmemory}", f"maxmemory-policy {self.maxmemory_policy}"]
        if self.password:
            lines.append(f"requirepass {_quote(self.password)}")
        return "\n".join(lines) + "\n"


def _quote(value: str) -> str:
    """A Redis config argument in double quotes (Redis unescapes \\ and \\")."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def redis_server(port: int, state_dir: Path, log_dir: Path, persist: bool = False, *, password: str | None = None,
                 appendfsync: str = "always", maxmemory: str = "0",
                 maxmemory_policy: str = "noeviction") -> ServerProcess:
    """A Redis on 127.0.0.1 for `healmesh up` and tests; ``persist`` keeps an append-only file
    (a restart then comes back with its data, as a production Redis would). The config file
    (see ``RedisConfig``) is ``state_dir/redis.conf``."""
    import shutil

    binary = shutil.which("redis-server")
    if binary is None:
        raise ServerFailed("redis-server not found: apt-get install redis-server (or point HEALMESH_REDIS_URL at one)")
    config = RedisConfig(port=port, state_dir=state_dir, password=password, persist=persist, appendfsync=appendfsync,
                         maxmemory=maxmemory, maxmemory_policy=maxmemory_policy)
    conf = private_dir(state_dir) / "redis.conf"
    conf.unlink(missing_ok=True)  # written afresh, created 0600 (it may hold the password)
    write_secret(conf, config.render())
    return ServerProcess(name=f"redis-{port}", cmd=[binary, str(conf)], port=port,
                         log_path=log_dir / f"redis-{port}.log", ready_path="")


def airflow_env(port: int, airflow_home: Path, dags_folder: Path,
                env: Mapping[str, str] | None = None) -> dict[str, str]:
    """What every Airflow part runs with: the healmesh DAGs, unpaused, no examples, the local
    executor and the simple auth manager (what `airflow standalone` forces), the UI's admin
    password in ``$AIRFLOW_HOME/simple_auth_manager_passwords.json.generated`` (0600, see
    ``ensure_airflow_passwords``)."""
    airflow_home.mkdir(parents=True, exist_ok=True)
    passwords = ensure_airflow_passwords(airflow_home)
    return {
        "AIRFLOW_HOME": str(airflow_home), "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__AUTH_MANAGER": "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager",
        "AIRFLOW__API__PORT": str(port), "AIRFLOW__API__HOST": LOCALHOST,
        # where a task asks for its work: Airflow's default is port 8080 whatever the API's port,
        # so on another port every task failed to start (ConnectError) before this was set
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": local_url(port, "/execution/"),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        # an asset event should start its consumer DAG within seconds, not a minute
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        # the parts start `airflow` subcommands by name: this interpreter's bin first
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        **(env or {}),
    }


def airflow_command(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "airflow"), *args]


# Airflow's long-running parts, each its own supervised process: `airflow standalone` runs the
# same four but never restarts one that dies (its scheduler, SIGKILLed, stays dead).
AIRFLOW_PARTS = ("api-server", "scheduler", "dag-processor", "triggerer")


def airflow_standalone(port: int, airflow_home: Path, dags_folder: Path, log_dir: Path,
                       env: Mapping[str, str] | None = None) -> ServerProcess:
    """`airflow standalone` (all parts in one process tree): how Airflow prints passwords is
    checked with it; `healmesh up` runs the parts one by one (``AIRFLOW_PARTS``)."""
    return ServerProcess(name="airflow", cmd=airflow_command("standalone"), port=port, log_path=log_dir / "airflow.log",
                         env=airflow_env(port, airflow_home, dags_folder, env), ready_path="/api/v2/monitor/health")


def airflow_passwords_file(airflow_home: Path) -> Path:
    return airflow_home / "simple_auth_manager_passwords.json.generated"


def ensure_airflow_passwords(airflow_home: Path, user: str = "admin") -> Path:
    """Airflow's UI password file, made here 0600 before Airflow starts. Airflow would write it
    with the process umask and print the new password (standalone's banner and the api-server's
    first start): with the file there it says "not echoing it here" and prints nothing. A file
    others could read (an older install; its password is in that install's airflow.log) is
    replaced by a new password."""
    import json
    import secrets

    path = airflow_passwords_file(airflow_home)
    with contextlib.suppress(FileNotFoundError):
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            path.unlink()
    with contextlib.suppress(FileExistsError):
        write_secret(path, json.dumps({user: secrets.token_urlsafe(16)}) + "\n")
    return path


def airflow_password(airflow_home: Path, user: str = "admin") -> str | None:
    import json

    path = airflow_passwords_file(airflow_home)
    try:
        return str(json.loads(path.read_text())[user])
    except (OSError, ValueError, KeyError):
        return None
