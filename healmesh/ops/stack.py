"""`healmesh up / down / status`: the local mesh, supervised.

Redis (its own, password-protected, unless HEALMESH_REDIS_URL names one: see local_redis),
MLflow (unless a tracking URI is configured), each scorer as its own `bentoml serve` on 8001 to
8003 (so each can be killed, restarted and scaled alone), the gateway on 8000 pointed at them,
Alertmanager (9093) and Prometheus (9090, alerting to the gateway's webhook: see alerting)
and Airflow's four parts, all as programs of one supervisor (``healmesh.ops.supervisor``: circus),
which restarts whatever exits. `up` starts them in order, each group once the one before is
ready, and returns when all are; `down` stops the supervisor and everything under it. Logs go
to ``$HEALMESH_HOME/logs`` (0600), secrets to ``$HEALMESH_HOME/secrets`` (0600), the
supervisor's socket and state to ``$HEALMESH_HOME/run``; the four directories are 0700.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import psutil

if TYPE_CHECKING:
    import pandas as pd

from healmesh import credentials, redis_conn
from healmesh.credentials import admin_token, labeller_token, secret_path
from healmesh.ops import alerting, cluster, local_redis, procs
from healmesh.ops.cluster import Profile
from healmesh.ops.supervisor import client, daemon
from healmesh.ops.supervisor.client import Supervisor, SupervisorError
from healmesh.ops.supervisor.spec import (
    ProcState,
    Program,
    Spec,
    process_state,
    read_starts,
    restarts,
    starts_file,
)
from healmesh.settings import Settings, get_settings
from healmesh.urls import local_url

if TYPE_CHECKING:
    import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
GATEWAY = "gateway.service:Gateway"
WANTED = "wanted.json"  # the programs `up` started: a stopped one of these is one the supervisor gave up on
READY_TIMEOUT_S = {"redis": 20.0, "mlflow": 120.0, "airflow-api-server": 240.0}
DEFAULT_READY_TIMEOUT_S = 120.0


def scorer_ports(settings: Settings) -> dict[str, int]:
    return {"xgboost": settings.xgb_port, "pytorch": settings.torch_port, "fallback": settings.fallback_port}


def models_available(settings: Settings) -> bool:
    """Both model scorers have something to serve: a champion in the registry when one answers
    (the lifecycle needs it, so built-in models alone do not do), else a built-in model."""
    from healmesh import bento_store, registry

    if registry.is_reachable(settings):
        names = (settings.xgb_registered_name, settings.mlp_registered_name)
        champions = [registry.version_by_alias(settings, n, settings.champion_alias) for n in names]
        return all(champions) and not champion_of_another_schema(settings)
    return all(bento_store.in_store(name) for name in (bento_store.XGB_BENTO_MODEL, bento_store.MLP_BENTO_MODEL))


def champion_of_another_schema(settings: Settings) -> str | None:
    """Why the registry's champion cannot serve this project (trained on another schema: the home
    served another project before), or None. A version without the tag predates it: not refused here
    (the scorer still checks the bundle itself)."""
    from healmesh import features, registry

    ref = registry.version_by_alias(settings, settings.xgb_registered_name, settings.champion_alias)
    if ref is None:
        return None
    theirs = registry.version_info(settings, settings.xgb_registered_name, ref.version).tags.get("healmesh.schema")
    mine = features.schema_fingerprint()
    if theirs is None or theirs == mine:
        return None
    return (f"the champion {settings.xgb_registered_name} v{ref.version} was trained on another schema ({theirs}; "
            f"this project's is {mine})")


def run_dir(settings: Settings) -> Path:
    return settings.home / "run"


def supervisor(settings: Settings) -> Supervisor:
    return Supervisor(run_dir(settings))


def _legacy_pid(settings: Settings, name: str) -> int | None:
    """A pid an older, unsupervised `healmesh up` recorded in ``run/<name>.pid``, while it is
    still the process that up started (a reused pid is not ours to stop)."""
    pid_file = run_dir(settings) / f"{name}.pid"
    try:
        pid = int(pid_file.read_text())
        return pid if psutil.Process(pid).create_time() <= pid_file.stat().st_mtime + 1.0 else None
    except (OSError, ValueError, psutil.Error):
        return None


def secure_home(settings: Settings) -> None:
    """``$HEALMESH_HOME`` and its secrets, logs and run directories 0700, logs 0600, including
    those an older install left readable by others."""
    for path in (settings.home, credentials.secrets_dir(settings), settings.home / "logs", run_dir(settings)):
        credentials.private_dir(path)
    for log in (settings.home / "logs").glob("*.log"):
        log.chmod(0o600)


def as_program(server: procs.ServerProcess, graceful_s: float = 15.0) -> Program:
    return Program(name=server.name, argv=tuple(server.cmd), log_path=str(server.log_path), port=server.port,
                   ready_path=server.ready_path, env=dict(server.env), cwd=str(server.cwd or ROOT),
                   graceful_s=graceful_s)


def redis_program(settings: Settings) -> Program | None:
    """Our Redis to supervise; None when HEALMESH_REDIS_URL names one or ours runs already."""
    if redis_conn.explicit(settings):
        print(f"{'redis':<9} {local_redis.describe(settings)}")
        return None
    old = _legacy_pid(settings, "redis")
    if old and redis_conn.managed(settings) is None:
        raise procs.ServerFailed(f"a Redis without a password, started by an older `healmesh up`, "
                                 f"still runs (pid {old}): stop that mesh with `healmesh down` "
                                 "(its Redis kept no data on disk), then run up again")
    outcome = local_redis.ensure(settings)
    if outcome.server is None:
        print(f"{'redis':<9} already running on {outcome.url}")
        return None
    return as_program(outcome.server, graceful_s=30.0)  # SIGTERM: Redis writes its append-only file


def mlflow_program(settings: Settings) -> Program | None:
    """An MLflow server on ``mlflow_port`` over the local SQLite store, unless a tracking URI is
    configured or an MLflow answers there already."""
    if settings.configured_tracking_uri:
        return None
    if procs.port_open(settings.mlflow_port):
        print(f"{'mlflow':<9} already answering on {settings.local_mlflow_uri}")
        return None
    server = procs.mlflow_server(settings.mlflow_port, settings.home / "mlflow", settings.home / "logs",
                                 backend_uri=settings.mlflow_backend_uri, artifacts=settings.artifact_root)
    return as_program(server)


def scorer_env(settings: Settings, tracking: str) -> dict[str, str]:
    """What every child of `up` gets: tokens, home, the Redis in use (URL and password file) and
    the tracking URI, and the project file, so that every process serves the same contract. (The
    supervisor's spec holding them is 0600 in the 0700 run directory.)"""
    from healmesh import project

    return {"HEALMESH_ADMIN_TOKEN": admin_token(settings), "HEALMESH_LABELLER_TOKEN": labeller_token(settings),
            "HEALMESH_HOME": str(settings.home), **redis_conn.client_env(settings), "MLFLOW_TRACKING_URI": tracking,
            project.ENV_VAR: str(project.active_path())}


def gateway_env(settings: Settings, env: dict[str, str]) -> dict[str, str]:
    """A child's env (``scorer_env``) plus where the scorers are."""
    ports = scorer_ports(settings)
    return {**env, "HEALMESH_XGB_URL": settings.xgb_url or local_url(ports["xgboost"]),
            "HEALMESH_TORCH_URL": settings.torch_url or local_url(ports["pytorch"]),
            "HEALMESH_FALLBACK_URL": settings.fallback_url or local_url(ports["fallback"])}


def scorer_programs(settings: Settings, env: dict[str, str]) -> list[Program]:
    logs = settings.home / "logs"
    return [as_program(procs.bentoml_server(name, procs.SCORERS[name], port, logs, env=env, cwd=ROOT))
            for name, port in scorer_ports(settings).items()]


def gateway_program(settings: Settings, env: dict[str, str]) -> Program:
    return as_program(procs.bentoml_server("gateway", GATEWAY, settings.gateway_port, settings.home / "logs",
                                           env={**gateway_env(settings, env), **alerting.gateway_env(settings)},
                                           cwd=ROOT))


def alerting_programs(settings: Settings) -> list[Program]:
    """Alertmanager, then Prometheus (its rules, scraping the mesh), configs written now."""
    return [as_program(server) for server in alerting.alerting_servers(settings)]


def profile(settings: Settings) -> Profile:
    """The profile `up` started in this home (local when none ran)."""
    return cluster.read_profile(run_dir(settings))


def airflow_home(settings: Settings) -> Path:
    """The AIRFLOW_HOME of Airflow's api-server (its UI password file): the rehearsal's own node."""
    if profile(settings) is Profile.CLUSTER:
        return cluster.airflow_ui_home(settings)
    return settings.home / "airflow"


def airflow_environment(settings: Settings, env: dict[str, str]) -> dict[str, str]:
    return procs.airflow_env(settings.airflow_port, airflow_home(settings), ROOT / "dags", {
        **gateway_env(settings, env), "HEALMESH_GATEWAY_URL": settings.gateway_api_url,
        "HEALMESH_DRIFT_REPORTS_DIR": str(settings.drift_reports_dir)})


def archiver_program(settings: Settings, env: dict[str, str]) -> Program:
    """The archiver loop (`healmesh archive run`): copies Redis's feature and feedback streams to
    the archive every HEALMESH_ARCHIVE__INTERVAL_S, ahead of Redis's trimming. No port: ready while it runs."""
    return Program(name="archiver", argv=(sys.executable, "-m", "healmesh.ops.cli", "archive", "run"),
                   log_path=str(settings.home / "logs" / "archiver.log"), ready_path=None, env=env, cwd=str(ROOT))


def airflow_programs(settings: Settings, env: dict[str, str]) -> list[Program]:
    airflow_env = airflow_environment(settings, env)
    logs = settings.home / "logs"
    out = []
    for part in procs.AIRFLOW_PARTS:
        api = part == "api-server"
        out.append(Program(name=f"airflow-{part}", argv=tuple(procs.airflow_command(part)),
                           log_path=str(logs / f"airflow-{part}.log"), port=settings.airflow_port if api else None,
                           ready_path="/api/v2/monitor/health" if api else None, env=airflow_env, cwd=str(ROOT),
                           graceful_s=30.0))
    return out


@dataclass(frozen=True)
class Plan:
    """What `up` runs, group by group: each group starts once the one before is ready."""

    groups: tuple[tuple[Program, ...], ...]
    tracking: str
    airflow: bool

    @property
    def programs(self) -> tuple[Program, ...]:
        return tuple(p for group in self.groups for p in group)


def plan(settings: Settings, airflow: bool) -> Plan:
    store = tuple(p for p in (redis_program(settings), mlflow_program(settings)) if p)
    tracking = settings.local_mlflow_uri
    env = scorer_env(settings, tracking)
    groups = [store, tuple(scorer_programs(settings, env)), (gateway_program(settings, env),),
              tuple(alerting_programs(settings))]
    groups += [(archiver_program(settings, env),)] if settings.archive.enabled else []
    if airflow:
        groups.append(tuple(airflow_programs(settings, env)))
    _check_ports(groups[1:])
    return Plan(groups=tuple(groups), tracking=tracking, airflow=airflow)


def _check_ports(groups: Sequence[Sequence[Program]]) -> None:
    taken = [p for group in groups for p in group if p.port and procs.port_open(p.port)]
    if taken:
        names = ", ".join(f"{p.name} :{p.port}" for p in taken)
        raise procs.ServerFailed(f"ports already taken ({names}): stop what holds them (an older mesh: `healmesh "
                                 "down`) or choose other ports (HEALMESH_GATEWAY_PORT, HEALMESH_XGB_PORT, ...)")


def cluster_plan(settings: Settings, airflow: bool = True) -> Plan:
    """The rehearsal (healmesh.ops.cluster): PostgreSQL metadata, MLflow serving artifacts, each
    part in a home of its own, gateways behind HAProxy, Airflow on Celery."""
    from healmesh.ops import postgres

    dbs = postgres.ensure(settings)
    if settings.configured_tracking_uri:
        raise procs.ServerFailed("the cluster profile runs its own MLflow on PostgreSQL: unset MLFLOW_TRACKING_URI "
                                 "and HEALMESH_MLFLOW_TRACKING_URI")
    redis = redis_program(settings)
    password = redis_conn.password(settings)
    tracking = local_url(settings.mlflow_port)
    env = scorer_env(settings, tracking)
    store = tuple(p for p in (redis, cluster.mlflow_program(settings, dbs["mlflow"], env, password),
                              cluster.s3_program(settings)) if p)
    groups: list[tuple[Program, ...]] = [
        store, tuple(cluster.scorer_programs(settings, scorer_ports(settings), env, password, ROOT)),
        tuple(cluster.gateway_programs(settings, GATEWAY, gateway_env(settings, env), password, ROOT)),
        (cluster.haproxy_program(settings),)]
    if settings.archive.enabled:
        groups.append((cluster.archiver_program(settings, env, password),))
    if airflow:
        base = {**gateway_env(settings, env), "HEALMESH_GATEWAY_URL": settings.gateway_api_url,
                **cluster.archive_env(settings)}
        shared = cluster.airflow_shared_env(settings, dbs["airflow"], redis_conn.url(settings), password)
        groups.append(tuple(cluster.airflow_programs(settings, ROOT / "dags", base, shared, password)))
    _check_ports(groups[1:])
    return Plan(groups=tuple(groups), tracking=tracking, airflow=airflow)


def _wanted(settings: Settings) -> set[str]:
    try:
        return set(json.loads((run_dir(settings) / WANTED).read_text()))
    except (OSError, ValueError):
        return set()


def _want(settings: Settings, names: Sequence[str]) -> None:
    path = run_dir(settings) / WANTED
    path.write_text(json.dumps(sorted(_wanted(settings) | set(names))))


def _start_group(settings: Settings, sup: Supervisor, group: Sequence[Program]) -> int:
    """Start a group's programs and wait until each is ready."""
    _want(settings, [p.name for p in group])
    for program in group:
        sup.start(program.name)
    return _await_ready(sup, group)


def _await_ready(sup: Supervisor, group: Sequence[Program]) -> int:
    """Wait until each program is ready; one that exits for good (the flapping policy gave up)
    or never gets ready fails `up`, with its log's tail."""
    for program in group:
        timeout = READY_TIMEOUT_S.get(program.name, DEFAULT_READY_TIMEOUT_S)
        deadline = time.monotonic() + timeout
        while True:
            pids = sup.pids(program.name)
            if client.answers_ready(program, running=bool(pids)):
                print(f"{program.name:<9} ready" + (f" on {program.url}" if program.url else "") +
                      f"  (log: {program.log_path})")
                break
            if sup.statuses().get(program.name) != "active" or time.monotonic() > deadline:
                why = "kept exiting: the supervisor gave up" if time.monotonic() <= deadline else \
                    f"not ready after {timeout:.0f} s"
                print(f"{program.name} {why}; the end of {program.log_path}:\n{_tail(Path(program.log_path))}",
                      file=sys.stderr)
                return 1
            time.sleep(0.2)
    return 0


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _migrate_airflow(settings: Settings, airflow_env: Mapping[str, str]) -> int:
    """Airflow's metadata database, created or upgraded once before its parts start."""
    log = procs.open_private_log(settings.home / "logs" / "airflow-migrate.log")
    try:
        done = subprocess.run(procs.airflow_command("db", "migrate"), env={**os.environ, **airflow_env}, cwd=ROOT,
                              stdout=log, stderr=subprocess.STDOUT, timeout=600, umask=procs.PRIVATE_UMASK)
    finally:
        os.close(log)
    if done.returncode:
        print(f"airflow db migrate failed: see {settings.home / 'logs' / 'airflow-migrate.log'}", file=sys.stderr)
    return done.returncode


def check_project(rows: int | None) -> pd.DataFrame | None:
    """The project file and its training data, read before anything starts: a bad file, or data
    whose columns disagree with it, stops `up` with one message and changes nothing. Returns the
    data file's validated rows (None for a generated project: its rows are made when needed)."""
    from healmesh import project
    from healmesh.data.files import training_frame
    from healmesh.errors import InvalidData
    from healmesh.settings import check_project_overrides

    p = project.active()
    check_project_overrides(p)
    if p.data.path is None:
        return None
    try:
        return training_frame(p)
    except InvalidData as exc:  # name the file and the project that declares it
        raise InvalidData(f"{p.data.path} (the data of {p.source}): {exc}") from None


def train_first(settings: Settings, rows: int | None, frame: pd.DataFrame | None = None) -> None:
    """What `healmesh train` does with its defaults: both models on the project's data (its file,
    or ``rows`` from its generator), registered (champion when there is none yet)."""
    from healmesh import project
    from healmesh.data.files import training_frame
    from healmesh.training import TrainConfig, format_report, train

    def progress(step: str) -> None:
        print(f"train: {step}", file=sys.stderr)

    progress("data")
    data = frame if frame is not None else training_frame(project.active(), rows=rows, seed=0)
    other = champion_of_another_schema(settings)
    if other:  # this project's first models become the champions (the old ones stay in the registry)
        print(f"{other}: training this project's models as the new champions", file=sys.stderr)
    report = train(data, settings, TrainConfig(seed=0, tags={"healmesh.trigger": "cli"}, promote=bool(other)),
                   progress=progress)
    print(format_report(report.to_dict()))


def up(train_rows: int | None = None, airflow: bool = True, profile: Profile = Profile.LOCAL) -> int:
    from healmesh.errors import ConfigError, InvalidData
    from healmesh.ops.postgres import PostgresUnavailable

    try:
        frame = check_project(train_rows)
    except (ConfigError, InvalidData) as exc:
        print(f"healmesh up: {exc}", file=sys.stderr)
        return 1
    settings = get_settings()
    secure_home(settings)
    sup = supervisor(settings)
    if sup.answers():
        return _up_again(settings, sup)
    try:
        mesh = cluster_plan(settings, airflow) if profile is Profile.CLUSTER else plan(settings, airflow)
    except (ValueError, OSError, procs.ServerFailed, PostgresUnavailable) as exc:
        print(f"healmesh up: {exc}", file=sys.stderr)
        return 1
    for program in mesh.programs:
        starts_file(run_dir(settings), program.name).unlink(missing_ok=True)
    (run_dir(settings) / WANTED).unlink(missing_ok=True)
    (run_dir(settings) / cluster.PROFILE_FILE).write_text(profile.value)
    try:
        sup = client.start_daemon(Spec(run_dir=str(run_dir(settings)), log_dir=str(settings.home / "logs"),
                                       programs=mesh.programs), cwd=ROOT)
    except SupervisorError as exc:
        print(f"healmesh up: {exc}", file=sys.stderr)
        return 1
    print(f"{'supervisor':<9} pid {sup.pid()}  (log: {settings.home / 'logs' / 'supervisor.log'})")
    os.environ["MLFLOW_TRACKING_URI"] = mesh.tracking  # the training below uses it
    if code := _start_groups(settings, sup, mesh, profile, train_rows, frame):
        # a start that stopped partway leaves nothing running: a second `up` would otherwise find
        # the supervisor, take the mesh for up and start only what this one had reached
        print("healmesh up: stopping what this up started (its logs stay in "
              f"{settings.home / 'logs'})", file=sys.stderr)
        down(settings)
        return code
    print(f"secrets (0600): admin token {secret_path(settings, credentials.ADMIN_TOKEN)} (or HEALMESH_ADMIN_TOKEN), "
          f"labeller token {secret_path(settings, credentials.LABELLER_TOKEN)} (or HEALMESH_LABELLER_TOKEN)")
    _settle(settings)
    return status(settings)


def _start_groups(settings: Settings, sup: Supervisor, mesh: Plan, profile: Profile, train_rows: int | None,
                  frame: pd.DataFrame | None) -> int:
    """Start the plan's groups in order (training before the scorers when there is no model yet);
    the first failure's code, or 0."""
    from healmesh.errors import ConfigError, InvalidData

    for i, group in enumerate(mesh.groups):
        if i == 1 and not models_available(settings):
            print("no trained model yet: training first", file=sys.stderr)
            try:
                train_first(settings, train_rows, frame)
            except (ConfigError, InvalidData) as exc:
                print(f"healmesh up: training failed: {exc}", file=sys.stderr)
                return 1
        if mesh.airflow and group is mesh.groups[-1] and (code := _migrate_airflow(settings, group[0].env)):
            return code
        if code := _start_group(settings, sup, group):
            return code
        if i == 0 and profile is Profile.CLUSTER:
            cluster.ensure_bucket(settings)
    return 0


def _settle(settings: Settings, timeout_s: float = 60.0) -> None:
    """Wait (bounded) until one report finds every program ready before the final verdict. Each
    was ready once, but a check right after start-up can catch a transient no: a `make up` exited 1
    with everything up when Airflow's api-server answered its health check late (2 s) behind the
    scheduler's first write to the SQLite database."""
    deadline = time.monotonic() + timeout_s
    while not _healthy(report(settings)) and time.monotonic() < deadline:
        time.sleep(1.0)


def _healthy(data: dict[str, Any]) -> bool:
    running = [p for p in data["processes"] if p["state"] != ProcState.STOPPED]
    return data["supervisor"]["pid"] is not None and bool(running) and \
        all(p["state"] == ProcState.READY for p in running)


def _up_again(settings: Settings, sup: Supervisor) -> int:
    """A second `up`: the mesh runs; start what was given up on (or stopped), touch nothing
    else, and return once every program is ready (one the supervisor is restarting included)."""
    spec = Spec.load(run_dir(settings))
    statuses = sup.statuses()
    wanted = [p for p in spec.programs if p.name in _wanted(settings)]
    stopped = [p for p in wanted if statuses.get(p.name) != "active"]
    print(f"healmesh is already up (supervisor pid {sup.pid()})" +
          (f": starting {', '.join(p.name for p in stopped)} again" if stopped else ": nothing to start"))
    for program in stopped:
        sup.start(program.name)
    if code := _await_ready(sup, wanted):
        return code
    return status(settings)


def kill(name: str) -> bool:
    """SIGKILL a program of the running mesh (its whole process tree), as a crash would: the
    supervisor starts it again. False if it was not running."""
    settings = get_settings()
    try:
        pids = supervisor(settings).pids(name)
    except SupervisorError:
        return False
    return any([procs.kill_tree(pid) for pid in pids])


def down(settings: Settings | None = None) -> int:
    settings = settings or get_settings()
    sup = supervisor(settings)
    if (pid := sup.pid()) is not None:
        names = [n for n, state in sup.statuses().items() if state == "active"]
        sup.quit()
        print(f"{'supervisor':<9} stopped (pid {pid}) with {', '.join(names) or 'nothing running'}")
    with contextlib.suppress(OSError, ValueError, KeyError):
        spec = Spec.load(run_dir(settings))
        for program in spec.programs:  # what a crashed supervisor could not stop
            stale = daemon.leftovers(spec.run_dir, program)
            for proc in stale:
                procs.kill_tree(proc.pid)
            if stale:
                print(f"{program.name:<9} {len(stale)} leftover process(es) killed")
    for name in ["airflow", "gateway", *scorer_ports(settings), "mlflow", "redis"]:  # an older, unsupervised up
        pid_file = run_dir(settings) / f"{name}.pid"
        if pid_file.exists():
            if legacy := _legacy_pid(settings, name):
                procs.terminate_tree(legacy, timeout=10.0)
                print(f"{name:<9} stopped (started by an older healmesh up)")
            pid_file.unlink(missing_ok=True)  # run/redis.json stays: the CLI must not fall back on another Redis
    (run_dir(settings) / WANTED).unlink(missing_ok=True)
    return 0


# --- status -----------------------------------------------------------------------------------

def processes(settings: Settings) -> list[dict[str, Any]]:
    """Each supervised program: state, pid, URL, restarts since `up`, uptime, log."""
    sup = supervisor(settings)
    try:
        spec = Spec.load(run_dir(settings))
        statuses = sup.statuses() if sup.pid() else {}
    except (OSError, ValueError, KeyError, SupervisorError):
        return []
    wanted = _wanted(settings)
    out = []
    for program in spec.programs:
        active = statuses.get(program.name) == "active"
        pids = sup.pids(program.name) if active else []
        pid = pids[0] if pids else None
        # consecutive failures, not one slow answer, make a running program not ready (policies.probing)
        judged = client.readiness(program, running=True) if pid else None
        ready = judged is not None and judged.failures == 0
        uptime = None
        if pid:
            with contextlib.suppress(psutil.Error):
                uptime = round(time.time() - psutil.Process(pid).create_time(), 1)
        state = process_state(program.name in wanted, active, bool(pid), ready)
        why = None
        if state not in (ProcState.READY, ProcState.STOPPED):
            why = judged.reason if judged is not None else ("not running: the supervisor is restarting it" if active
                                                            else "stopped: the supervisor gave up on it")
        out.append({"name": program.name, "state": str(state), "why": why,
                    "pid": pid, "url": program.url, "restarts": restarts(read_starts(run_dir(settings), program.name)),
                    "uptime_s": uptime, "log": program.log_path})
    return out


def _gateway_state(settings: Settings) -> dict[str, Any] | None:
    headers = {"Authorization": f"Bearer {admin_token(settings)}"}
    try:
        state = httpx.get(local_url(settings.gateway_port, "/api/v1/admin/state"), timeout=3,
                          headers=headers).json()
        return {"weights": state["effective_weights"],
                "breakers": {k: v["state"] for k, v in state["breakers"].items()},
                "redis_up": state["feature_log"]["redis_up"], "ready": procs.answers(settings.gateway_port, "/readyz")}
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None


def _scorer_slots(settings: Settings, port: int) -> str:
    headers = {"Authorization": f"Bearer {admin_token(settings)}"}
    try:
        state = httpx.get(local_url(port, "/admin/state"), timeout=3, headers=headers).json()
        return ", ".join(f"{slot}={m['model']} v{m['version']}" + (f" ({m['source']})" if "source" in m else "")
                         for slot, m in state.get("slots", {}).items() if m)
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return ""


def report(settings: Settings) -> dict[str, Any]:
    """Everything `healmesh status` shows, as data (``--json``)."""
    sup = supervisor(settings)
    return {
        "supervisor": {"pid": sup.pid(), "log": str(settings.home / "logs" / "supervisor.log")},
        "processes": processes(settings),
        "redis": {"url": redis_conn.public_url(settings), "status": local_redis.describe(settings)},
        "mlflow": settings.local_mlflow_uri,
        "airflow": {"url": local_url(settings.airflow_port), "user": "admin",
                    "password_file": str(procs.airflow_passwords_file(airflow_home(settings))),
                    "ready": procs.answers(settings.airflow_port, "/api/v2/monitor/health", timeout=5.0)},
        "gateway": _gateway_state(settings),
        "models": {name: _scorer_slots(settings, port) for name, port in scorer_ports(settings).items()},
        "reports": str(settings.drift_reports_dir / "index.html"),
    }


def status(settings: Settings | None = None, as_json: bool = False) -> int:
    """Print the mesh's state; 0 when every program `up` started is ready (and there are some)."""
    settings = settings or get_settings()
    data = report(settings)
    healthy = _healthy(data)
    if not healthy:  # why first, on stderr: which program, which check and how it failed, its log
        for p in data["processes"]:
            if p["why"]:
                print(f"healmesh: {p['name']} is {p['state']}: {p['why']}; the end of {p['log']}:\n"
                      f"{_tail(Path(p['log']), 15)}", file=sys.stderr)
    if as_json:
        print(json.dumps({**data, "healthy": healthy}, indent=1))
        return 0 if healthy else 1
    sup = data["supervisor"]
    if sup["pid"] is None:
        print("healmesh is not up: start it with `make up` (or `healmesh up`)")
    else:
        print(f"{'supervisor':<22} pid {sup['pid']}  log {sup['log']}")
    for p in data["processes"]:
        where = p["url"] or ""
        extra = data["models"].get(p["name"], "")
        uptime = f"up {p['uptime_s']:.0f}s" if p["uptime_s"] is not None else ""
        print(f"{p['name']:<22} {p['state']:<8} pid {p['pid'] or '-':<7} {where:<24} restarts {p['restarts']:<3} "
              f"{uptime:<10} {extra}  log {p['log']}")
    print(f"{'redis':<22} {data['redis']['status']}")
    print(f"{'mlflow':<22} {data['mlflow']}")
    air = data["airflow"]
    print(f"{'airflow':<22} {air['url']}  " + (f"login admin, password in {air['password_file']}" if air["ready"]
                                              else "not answering"))
    print(f"{'reports':<22} {data['reports']}")
    if (gw := data["gateway"]) is not None:
        weights = ", ".join(f"{k}={v:.0%}" for k, v in gw["weights"].items())
        breakers = ", ".join(f"{k}={v}" for k, v in gw["breakers"].items())
        print(f"{'routing':<22} weights {weights}; breakers {breakers}; redis {'up' if gw['redis_up'] else 'DOWN'}")
    elif sup["pid"] is not None:
        print(f"{'routing':<22} the gateway's admin API did not answer on :{settings.gateway_port}")
    return 0 if healthy else 1
