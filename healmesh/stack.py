"""`healmesh up / down / status`: the local mesh as background processes.

Redis (its own, password-protected, unless HEALMESH_REDIS_URL names one: see local_redis),
each scorer as its own `bentoml serve` on 8001 to 8003 (so each can be killed, restarted and
scaled alone), and the gateway on 8000 pointed at them. Process ids go to
``$HEALMESH_HOME/run``, logs to ``$HEALMESH_HOME/logs`` (0600), secrets to
``$HEALMESH_HOME/secrets`` (0600); the four directories are 0700.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx
import psutil

from healmesh import credentials, local_redis, procs, redis_conn
from healmesh.credentials import admin_token, labeller_token, secret_path
from healmesh.settings import Settings, get_settings

ROOT = Path(__file__).resolve().parents[1]
GATEWAY = "gateway.service:Gateway"


def scorer_ports(settings: Settings) -> dict[str, int]:
    return {"xgboost": settings.xgb_port, "pytorch": settings.torch_port, "fallback": settings.fallback_port}


def models_available(settings: Settings) -> bool:
    """Both model scorers have something to serve: a champion in the registry when one answers
    (the lifecycle needs it, so built-in models alone do not do), else a built-in model."""
    from healmesh import bento_store, registry

    if registry.is_reachable(settings):
        names = (settings.xgb_registered_name, settings.mlp_registered_name)
        return all(registry.version_by_alias(settings, n, settings.champion_alias) for n in names)
    return all(bento_store.in_store(name) for name in (bento_store.XGB_BENTO_MODEL, bento_store.MLP_BENTO_MODEL))


def _pid_file(settings: Settings, name: str) -> Path:
    return settings.home / "run" / f"{name}.pid"


def _recorded_pid(pid_file: Path) -> int | None:
    """The pid `up` recorded, while it is still the process `up` started: a pid reused by a
    later process (after a reboot, say) is not ours to stop."""
    try:
        pid = int(pid_file.read_text())
        return pid if psutil.Process(pid).create_time() <= pid_file.stat().st_mtime + 1.0 else None
    except (OSError, ValueError, psutil.Error):
        return None


def _remember(settings: Settings, server: procs.ServerProcess) -> None:
    path = _pid_file(settings, server.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(str(server.popen.pid if server.popen else ""))


def _ready(port: int, path: str = "/readyz", timeout: float = 2.0) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def _airflow_ready(port: int) -> bool:
    return _ready(port, "/api/v2/monitor/health", timeout=5.0)


def tracking_uri(settings: Settings) -> str:
    """The MLflow tracking URI the stack uses: the configured one, else its own server."""
    return os.environ.get("MLFLOW_TRACKING_URI") or settings.mlflow_tracking_uri or \
        f"http://127.0.0.1:{settings.mlflow_port}"


def secure_home(settings: Settings) -> None:
    """``$HEALMESH_HOME`` and its secrets, logs and run directories 0700, logs 0600, including
    those an older install left readable by others."""
    for path in (settings.home, credentials.secrets_dir(settings), settings.home / "logs", settings.home / "run"):
        credentials.private_dir(path)
    for log in (settings.home / "logs").glob("*.log"):
        log.chmod(0o600)


def ensure_redis(settings: Settings) -> None:
    """HEALMESH_REDIS_URL as given, or our own Redis, reused or started (local_redis)."""
    if redis_conn.explicit(settings):
        print(f"{'redis':<9} {local_redis.describe(settings)}")
        return
    old = _recorded_pid(_pid_file(settings, "redis"))
    if old and redis_conn.managed(settings) is None:
        raise procs.ServerFailed(f"a Redis without a password, started by an older `healmesh up`, still runs (pid {old}): "
                                 "stop that mesh with `healmesh down` (its Redis kept no data on disk), then run up again")
    outcome = local_redis.ensure(settings)
    if outcome.started is not None:
        _remember(settings, outcome.started)
    print(f"{'redis':<9} {'started on' if outcome.started else 'already running on'} {outcome.url}")


def ensure_mlflow(settings: Settings) -> str:
    """The tracking URI everything started here uses: the configured one, or an MLflow server
    on ``mlflow_port`` over the local SQLite store (started when nothing answers there)."""
    configured = os.environ.get("MLFLOW_TRACKING_URI") or settings.mlflow_tracking_uri
    if configured:
        return configured
    port = settings.mlflow_port
    uri = tracking_uri(settings)  # the stack's own server
    if not procs.port_open(port):
        server = procs.mlflow_server(port, settings.home / "mlflow", settings.home / "logs",
                                     backend_uri=settings.mlflow_backend_uri, artifacts=settings.artifact_root)
        server.start()
        server.wait_ready(timeout=120)
        _remember(settings, server)
        print(f"{'mlflow':<9} ready on {uri}")
    return uri


def scorer_env(settings: Settings, tracking: str) -> dict[str, str]:
    """What every child of `up` gets: tokens, home, the Redis in use (URL and password file) and
    the tracking URI."""
    return {"HEALMESH_ADMIN_TOKEN": admin_token(settings), "HEALMESH_LABELLER_TOKEN": labeller_token(settings),
            "HEALMESH_HOME": str(settings.home), **redis_conn.client_env(settings),
            "MLFLOW_TRACKING_URI": tracking}


def gateway_env(settings: Settings, env: dict[str, str]) -> dict[str, str]:
    """A child's env (``scorer_env``) plus where the scorers are."""
    ports = scorer_ports(settings)
    return {**env, "HEALMESH_XGB_URL": settings.xgb_url or f"http://127.0.0.1:{ports['xgboost']}",
            "HEALMESH_TORCH_URL": settings.torch_url or f"http://127.0.0.1:{ports['pytorch']}",
            "HEALMESH_FALLBACK_URL": settings.fallback_url or f"http://127.0.0.1:{ports['fallback']}"}


def kill(name: str) -> bool:
    """SIGKILL a process `up` started (its whole group), as a crash would. False if not running."""
    pid = _recorded_pid(_pid_file(get_settings(), name))
    return procs.kill_tree(pid) if pid else False


def start_scorer(name: str) -> int:
    """Start one scorer again, as `up` does (after `kill`, say)."""
    settings = get_settings()
    tracking = tracking_uri(settings)
    port = scorer_ports(settings)[name]
    return _start_group(settings, [(name, procs.SCORERS[name], port, scorer_env(settings, tracking))])


def up(train_rows: int = 60_000, airflow: bool = True) -> int:
    settings = get_settings()
    secure_home(settings)
    try:
        ensure_redis(settings)
    except (ValueError, OSError, procs.ServerFailed) as exc:
        print(f"redis: {exc}", file=sys.stderr)
        return 1
    tracking = ensure_mlflow(settings)
    os.environ["MLFLOW_TRACKING_URI"] = tracking  # the training below and every child use it
    if not models_available(settings):
        print("no trained model yet: training first", file=sys.stderr)
        from healmesh.cli import main as cli_main

        code = cli_main(["train", "--n", str(train_rows)])
        if code:
            return code
    env = scorer_env(settings, tracking)
    gateway = gateway_env(settings, env)
    scorers = [(name, procs.SCORERS[name], port, env) for name, port in scorer_ports(settings).items()]
    # scorers first: a gateway probing scorers that are still loading would open its breakers
    for group in (scorers, [("gateway", GATEWAY, settings.gateway_port, gateway)]):
        code = _start_group(settings, group)
        if code:
            return code
    if airflow:
        code = ensure_airflow(settings, {**gateway,
                                         "HEALMESH_GATEWAY_URL": f"http://127.0.0.1:{settings.gateway_port}",
                                         "HEALMESH_DRIFT_REPORTS_DIR": str(settings.drift_reports_dir)})
        if code:
            return code
    print(f"secrets (0600): admin token {secret_path(settings, credentials.ADMIN_TOKEN)} (or HEALMESH_ADMIN_TOKEN), "
          f"labeller token {secret_path(settings, credentials.LABELLER_TOKEN)} (or HEALMESH_LABELLER_TOKEN)")
    return status(settings)


def airflow_home(settings: Settings) -> Path:
    return settings.home / "airflow"


def ensure_airflow(settings: Settings, env: dict[str, str]) -> int:
    port = settings.airflow_port
    if _airflow_ready(port):
        print(f"{'airflow':<9} already answering on {port}")
        return 0
    server = procs.airflow_standalone(port, airflow_home(settings), ROOT / "dags", settings.home / "logs", env=env)
    server.cwd = ROOT
    server.start()
    _remember(settings, server)
    return 0 if _await_ready(server, timeout=240) else 1


def _await_ready(server: procs.ServerProcess, timeout: float) -> bool:
    try:
        server.wait_ready(timeout=timeout)
    except procs.ServerFailed as exc:
        print(str(exc), file=sys.stderr)
        return False
    print(f"{server.name:<9} ready on {server.url}  (log: {server.log_path})")
    return True


def _start_group(settings: Settings, group: list[tuple[str, str, int, dict[str, str]]]) -> int:
    started: list[procs.ServerProcess] = []
    for name, target, port, server_env in group:
        if _ready(port):
            print(f"{name:<9} already answering on {port}")
            continue
        if procs.port_open(port):
            print(f"{name:<9} port {port} is taken by something that is not a ready healmesh server", file=sys.stderr)
            return 1
        server = procs.bentoml_server(name, target, port, settings.home / "logs", env=server_env, cwd=ROOT)
        server.start()
        _remember(settings, server)
        started.append(server)
    return 0 if all(_await_ready(server, timeout=120) for server in started) else 1


def down(settings: Settings | None = None) -> int:
    settings = settings or get_settings()
    for name in ["airflow", "gateway", *scorer_ports(settings), "mlflow", "redis"]:
        pid_file = _pid_file(settings, name)
        if not pid_file.exists():
            continue
        pid = _recorded_pid(pid_file)
        if pid:
            procs.terminate_tree(pid, timeout=10.0)
        pid_file.unlink(missing_ok=True)  # run/redis.json stays: the CLI must not fall back on another Redis
        print(f"{name:<9} {'stopped' if pid else 'was not running'}")
    return 0


def status(settings: Settings | None = None) -> int:
    settings = settings or get_settings()
    headers = {"Authorization": f"Bearer {admin_token(settings)}"}
    worst = 0
    for name, port in scorer_ports(settings).items():
        if not _ready(port):
            print(f"{name:<9} :{port}  DOWN")
            worst = 1
            continue
        try:
            state = httpx.get(f"http://127.0.0.1:{port}/admin/state", timeout=3, headers=headers).json()
            served = ", ".join(f"{slot}={m['model']} v{m['version']}" + (f" ({m['source']})" if "source" in m else "")
                               for slot, m in state.get("slots", {}).items() if m)
        except (httpx.HTTPError, ValueError):
            served = "(admin API not reachable with this token)"
        print(f"{name:<9} :{port}  ready  {served}")
    tracking = tracking_uri(settings)
    print(f"{'mlflow':<9} {tracking}")
    print(f"{'redis':<9} {local_redis.describe(settings)}")
    if _airflow_ready(settings.airflow_port):
        print(f"{'airflow':<9} http://127.0.0.1:{settings.airflow_port}  login admin, password in "
              f"{procs.airflow_passwords_file(airflow_home(settings))}")
    else:
        print(f"{'airflow':<9} :{settings.airflow_port}  not running")
    print(f"{'reports':<9} {settings.drift_reports_dir / 'index.html'}")
    port = settings.gateway_port
    if not _ready(port):
        print(f"{'gateway':<9} :{port}  DOWN")
        return 1
    try:
        state = httpx.get(f"http://127.0.0.1:{port}/api/v1/admin/state", timeout=3, headers=headers).json()
        weights = ", ".join(f"{k}={v:.0%}" for k, v in state["effective_weights"].items())
        breakers = ", ".join(f"{k}={v['state']}" for k, v in state["breakers"].items())
        print(f"{'gateway':<9} :{port}  ready  weights {weights}; breakers {breakers}; "
              f"redis {'up' if state['feature_log']['redis_up'] else 'DOWN'}")
    except (httpx.HTTPError, ValueError, KeyError):
        print(f"{'gateway':<9} :{port}  ready  (admin API not reachable with this token)")
    return worst
