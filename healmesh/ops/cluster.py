"""The cluster rehearsal, `healmesh up --profile cluster`: the mesh as it runs on several
machines, on one, under the same supervisor as the default profile.

- Airflow's and MLflow's metadata on PostgreSQL (healmesh.ops.postgres); Airflow on the
  CeleryExecutor (broker: the mesh's Redis, its database 1) with an api-server, a scheduler, a
  DAG processor, a triggerer and ``cluster.celery_workers`` Celery workers;
- MLflow serving its artifacts (models, drift reports) over HTTP: no part reads another's files;
- two or more gateway instances behind HAProxy on ``gateway_port``, which health-checks ``/readyz``
  and retries a request a dying instance dropped on the other;
- every process in a home of its own (``<home>/nodes/<name>``: HEALMESH_HOME, working directory,
  TMPDIR, BentoML's and Airflow's homes, logs), with its own copy of each secret it needs, as a
  mounted Secret would be. The code (the repository, like an image) is shared; state is not.

Plain functions from settings to ``Program``s; `healmesh.ops.stack` starts them.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path

from healmesh.credentials import private_dir, read_or_create, secrets_dir, write_secret
from healmesh.ops import procs
from healmesh.ops.postgres import Database
from healmesh.ops.supervisor.spec import Program
from healmesh.settings import Settings
from healmesh.urls import LOCALHOST, local_url

NODES = "nodes"
PROFILE_FILE = "profile"  # in the run directory: which profile `up` started


class Profile(StrEnum):
    LOCAL = "local"
    CLUSTER = "cluster"


def read_profile(run_dir: Path) -> Profile:
    try:
        return Profile(run_dir.joinpath(PROFILE_FILE).read_text().strip())
    except (OSError, ValueError):
        return Profile.LOCAL


def node_home(settings: Settings, name: str) -> Path:
    """The private home of one process of the rehearsal (0700), with its logs folder."""
    home = private_dir(settings.home / NODES / name)
    private_dir(home / "logs")
    return home


def node_secret(node: Path, name: str, value: str) -> Path:
    """A secret the process at ``node`` may read, in its own home (0600), as a mounted Secret."""
    path = node / "secrets" / name
    path.unlink(missing_ok=True)
    write_secret(path, value)
    return path


def _node_env(settings: Settings, node: Path, base: Mapping[str, str], redis_password: str | None) -> dict[str, str]:
    env = {k: v for k, v in base.items() if k != "HEALMESH_REDIS_PASSWORD_FILE"}
    # HOME too: what a library caches under ~ (BentoML's model store, matplotlib's fonts) is the node's own
    env.update(HOME=str(node), HEALMESH_HOME=str(node), TMPDIR=str(private_dir(node / "tmp")),
               BENTOML_HOME=str(node / "bentoml"), HEALMESH_DRIFT_REPORTS_DIR=str(node / "drift_reports"))
    if redis_password:
        env["HEALMESH_REDIS_PASSWORD_FILE"] = str(node_secret(node, "redis_password", redis_password))
    return env


def _program(server: procs.ServerProcess, node: Path, graceful_s: float = 15.0) -> Program:
    return Program(name=server.name, argv=tuple(server.cmd), log_path=str(server.log_path), port=server.port,
                   ready_path=server.ready_path, env=dict(server.env), cwd=str(node), graceful_s=graceful_s)


def mlflow_program(settings: Settings, db: Database, base: Mapping[str, str], redis_password: str | None) -> Program:
    """MLflow on PostgreSQL, serving artifacts from its own home; the backend URI (with its
    password) goes by environment, not argument."""
    node = node_home(settings, "mlflow")
    server = procs.mlflow_server(settings.mlflow_port, node / "mlflow", node / "logs", backend_uri=db.uri(),
                                 artifacts=node / "artifacts")
    argv = list(server.cmd)
    at = argv.index("--backend-store-uri")
    del argv[at:at + 2]
    server.cmd = argv
    env = {**_node_env(settings, node, base, redis_password), "MLFLOW_BACKEND_STORE_URI": db.uri()}
    env.pop("MLFLOW_TRACKING_URI", None)
    server.env = env
    return _program(server, node)


def bento_program(name: str, target: str, port: int, env: Mapping[str, str], node: Path, code: Path) -> Program:
    """A BentoML server started in its own home: the code from ``code`` (``--working-dir``: the
    repository, as an image would carry it), no link to a shared model store (models come from
    the MLflow registry only)."""
    server = procs.bentoml_server(name, target, port, node / "logs", env=env, cwd=node, shared_models=False)
    server.cmd = [*server.cmd, "--working-dir", str(code)]
    return _program(server, node)


def scorer_programs(settings: Settings, ports: Mapping[str, int], base: Mapping[str, str],
                    redis_password: str | None, code: Path) -> list[Program]:
    out = []
    for name, port in ports.items():
        node = node_home(settings, name)
        out.append(bento_program(name, procs.SCORERS[name], port, _node_env(settings, node, base, redis_password),
                                 node, code))
    return out


def gateway_names(settings: Settings) -> list[str]:
    return [f"gateway-{i + 1}" for i in range(len(settings.cluster.gateway_ports))]


def gateway_programs(settings: Settings, target: str, base: Mapping[str, str],
                     redis_password: str | None, code: Path) -> list[Program]:
    out = []
    for name, port in zip(gateway_names(settings), settings.cluster.gateway_ports, strict=True):
        node = node_home(settings, name)
        env = {**_node_env(settings, node, base, redis_password), "HEALMESH_GATEWAY_PORT": str(port),
               "HEALMESH_GATEWAY_WORKERS": str(settings.cluster.gateway_workers)}
        out.append(bento_program(name, target, port, env, node, code))
    return out


def haproxy_config(listen_port: int, backends: Mapping[str, int]) -> str:
    """HAProxy in front of the gateways. It checks ``/readyz`` every second (down after 2 misses,
    back after 2 answers) and retries, on the other instance, a request whose connection failed or
    whose instance closed without an answer (a killed gateway): predictions and labels are safe
    to repeat (a label is idempotent; a prediction has no effect but its log line)."""
    servers = "\n".join(f"    server {name} {LOCALHOST}:{port} check" for name, port in backends.items())
    return f"""global
    maxconn 4096

defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 30s
    timeout http-keep-alive 60s
    option redispatch
    # the whole body first: a request can be retried only if HAProxy holds all of it
    option http-buffer-request
    retries 3
    retry-on conn-failure empty-response response-timeout

frontend mesh
    bind {LOCALHOST}:{listen_port}
    default_backend gateways

backend gateways
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 1s fall 2 rise 2
{servers}
"""


def haproxy_program(settings: Settings) -> Program:
    binary = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
    if binary is None:
        raise procs.ServerFailed("haproxy not found: apt-get install haproxy")
    node = node_home(settings, "lb")
    config = node / "haproxy.cfg"
    config.write_text(haproxy_config(settings.gateway_port, dict(zip(gateway_names(settings),
                                                                     settings.cluster.gateway_ports, strict=True))))
    return Program(name="lb", argv=(binary, "-db", "-f", str(config)), log_path=str(node / "logs" / "lb.log"),
                   port=settings.gateway_port, ready_path="/readyz", cwd=str(node), graceful_s=5.0,
                   env={"HOME": str(node), "HEALMESH_HOME": str(node)})


def s3_program(settings: Settings) -> Program:
    """The archive's object store: moto's S3 server on ``cluster.s3_port`` (ready: the port accepts)."""
    node = node_home(settings, "s3")
    return Program(name="s3", argv=(sys.executable, "-m", "moto.server", "-H", LOCALHOST,
                                    "-p", str(settings.cluster.s3_port)),
                   log_path=str(node / "logs" / "s3.log"), port=settings.cluster.s3_port, ready_path="",
                   env={"HOME": str(node), "HEALMESH_HOME": str(node)}, cwd=str(node), graceful_s=5.0)


def archive_env(settings: Settings) -> dict[str, str]:
    """Where the parts that read or write the archive (the archiver, the lifecycle) find it: the
    rehearsal's S3 server, with keys generated once (moto takes any; a real store checks them)."""
    keys = secrets_dir(settings)
    return {"HEALMESH_ARCHIVE__URL": f"s3://{settings.cluster.archive_bucket}/feature-log",
            "HEALMESH_ARCHIVE__ENDPOINT_URL": local_url(settings.cluster.s3_port),
            "AWS_ACCESS_KEY_ID": read_or_create(keys / "s3_access_key_id", 12),
            "AWS_SECRET_ACCESS_KEY": read_or_create(keys / "s3_secret_access_key", 30)}


def ensure_bucket(settings: Settings) -> None:
    """The archive's bucket on the rehearsal's S3 server (a new server holds none)."""
    import boto3

    env = archive_env(settings)
    client = boto3.client("s3", endpoint_url=env["HEALMESH_ARCHIVE__ENDPOINT_URL"],
                          region_name=settings.archive.region, aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    names = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if settings.cluster.archive_bucket not in names:
        client.create_bucket(Bucket=settings.cluster.archive_bucket)


def archiver_program(settings: Settings, base: Mapping[str, str], redis_password: str | None) -> Program:
    node = node_home(settings, "archiver")
    return Program(name="archiver", argv=(sys.executable, "-m", "healmesh.ops.cli", "archive", "run"),
                   log_path=str(node / "logs" / "archiver.log"), ready_path=None,
                   env={**_node_env(settings, node, base, redis_password), **archive_env(settings)}, cwd=str(node))


AIRFLOW_PARTS = ("api-server", "scheduler", "dag-processor", "triggerer")


def airflow_shared_env(settings: Settings, db: Database, redis_url: str, redis_password: str | None) -> dict[str, str]:
    """What every Airflow part of the rehearsal shares: the executor, the metadata database, the
    broker, and the secrets that must agree between parts (a task's token is signed by the
    api-server and checked on a worker; the api-server signs its requests for a worker's logs)."""
    from cryptography.fernet import Fernet

    keys = secrets_dir(settings)
    fernet = keys / "airflow_fernet_key"
    if not fernet.exists():
        with contextlib.suppress(FileExistsError):  # another `up` wrote it first
            write_secret(fernet, Fernet.generate_key().decode())
    broker = redis_url.rsplit("/", 1)[0] + "/1"  # database 1: the mesh's keys are in 0
    if redis_password:
        broker = broker.replace("redis://", f"redis://:{redis_password}@", 1)
    return {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db.uri(),
        # psycopg 3 is async too; unset, Airflow derives an asyncpg URI (a second driver)
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": db.uri(),
        "AIRFLOW__CELERY__BROKER_URL": broker,
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + db.uri(),
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(settings.cluster.celery_concurrency),
        "AIRFLOW__CORE__FERNET_KEY": fernet.read_text().strip(),
        "AIRFLOW__API_AUTH__JWT_SECRET": read_or_create(keys / "airflow_jwt_secret", 32),
        "AIRFLOW__API__SECRET_KEY": read_or_create(keys / "airflow_api_secret_key", 32),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": local_url(settings.airflow_port, "/execution/"),
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(settings.cluster.task_heartbeat_timeout_s),
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
    }


def airflow_node_env(settings: Settings, name: str, dags: Path, base: Mapping[str, str], shared: Mapping[str, str],
                     redis_password: str | None) -> tuple[Path, dict[str, str]]:
    node = node_home(settings, name)
    env = procs.airflow_env(settings.airflow_port, node / "airflow", dags,
                            {**_node_env(settings, node, base, redis_password), **shared})
    return node, env


def airflow_programs(settings: Settings, dags: Path, base: Mapping[str, str], shared: Mapping[str, str],
                     redis_password: str | None) -> list[Program]:
    out = []
    for part in AIRFLOW_PARTS:
        name = f"airflow-{part}"
        node, env = airflow_node_env(settings, name, dags, base, shared, redis_password)
        api = part == "api-server"
        out.append(Program(name=name, argv=tuple(procs.airflow_command(part)),
                           log_path=str(node / "logs" / f"{name}.log"), port=settings.airflow_port if api else None,
                           ready_path="/api/v2/monitor/health" if api else None, env=env, cwd=str(node),
                           graceful_s=30.0))
    for i in range(settings.cluster.celery_workers):
        name = f"celery-worker-{i + 1}"
        node, env = airflow_node_env(settings, name, dags, base, shared, redis_password)
        env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] = str(settings.cluster.worker_log_port + i)
        argv = procs.airflow_command("celery", "worker", "--celery-hostname", f"{name}@%h",
                                     "--concurrency", str(settings.cluster.celery_concurrency))
        out.append(Program(name=name, argv=tuple(argv), log_path=str(node / "logs" / f"{name}.log"), port=None,
                           ready_path=None, env=env, cwd=str(node), graceful_s=30.0))
    return out


def airflow_ui_home(settings: Settings) -> Path:
    """Where the api-server of the rehearsal keeps its AIRFLOW_HOME (its UI password file)."""
    return settings.home / NODES / "airflow-api-server" / "airflow"

