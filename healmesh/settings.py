"""The one settings object. Every knob is an environment variable ``HEALMESH_<NAME>``; a knob of a
group is ``HEALMESH_<GROUP>__<NAME>`` (``HEALMESH_BREAKER__OPEN_WAIT_S``).

A group that a policy reads is that policy's own frozen config class (``breaker`` is
``policies.breaker.BreakerConfig``): its defaults and validation are written there, once.
Constructing Settings reads the environment and nothing else that can block (the DAG files
read it while they are parsed); the default gateway worker count reads the cgroup CPU quota.

Defaults are the embedded, single-machine set-up (`make up`): everything lives under
``HEALMESH_HOME`` (``./.healmesh``), MLflow is a local SQLite store unless
``MLFLOW_TRACKING_URI`` points at a server.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from healmesh.policies.breaker import BreakerConfig
from healmesh.policies.canary import CanaryConfig
from healmesh.policies.chain import ChainConfig
from healmesh.policies.concurrency import LimiterConfig
from healmesh.policies.drift import DriftThresholds
from healmesh.policies.gate import GateConfig
from healmesh.policies.retry_budget import RetryBudgetConfig
from healmesh.urls import local_url


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by its cgroup's CPU quota (a container
    limited to 1.5 CPUs on a 32-core host counts 1)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, _cgroup_cpu_limit() or cpus))


def _cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Whole CPUs of the CPU quota of this process's cgroup (v2 ``cpu.max``, v1
    ``cpu.cfs_quota_us``), at least 1; None when there is none or it cannot be read."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else max(1, int(quota) // int(period))
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else max(1, quota_us // period_us)
    except (OSError, ValueError):
        return None


def default_gateway_workers() -> int:
    """Two gateway workers where there are two CPUs or more, one otherwise."""
    return 2 if available_cpus() >= 2 else 1


class FeatureLogConfig(BaseModel):
    """The gateway's feature log: a Redis stream, written off the hot path (``HEALMESH_FEATURE_LOG__<NAME>``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stream_maxlen: int = Field(default=1_000_000, ge=1_000)
    buffer_max: int = Field(default=100_000, ge=1)
    flush_batch: int = Field(default=256, ge=1)
    flush_interval_ms: float = Field(default=20.0, gt=0)


class ArchiveConfig(BaseModel):
    """The durable feature log: the feature and feedback streams copied to Parquet parts on an
    object store, beyond Redis's hot window (``HEALMESH_ARCHIVE__<NAME>``; healmesh.lifecycle.archive)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    # file:///abs/dir or s3://bucket/prefix; unset: a folder under HEALMESH_HOME (Settings.archive_url)
    url: str | None = None
    # an S3-compatible server (MinIO, moto, Ceph); unset: AWS itself
    endpoint_url: str | None = None
    region: str = "us-east-1"
    # unset: boto3's own chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, a profile, an instance role)
    access_key_id: str | None = None
    secret_access_key: SecretStr | None = None
    # how long archived rows are kept, and so how late a label may still arrive (30 days: some
    # labels, a chargeback say, come days to weeks after the answer); a later label is answered 410
    retention_s: int = Field(default=30 * 86_400, ge=60)
    # stream entries read per round trip, and the most rows in one part
    batch_rows: int = Field(default=50_000, ge=1)
    # the loop's pause between runs: it must stay well under label_retention_s, or Redis trims
    # entries before they are copied (the archiver logs and counts such a gap)
    interval_s: float = Field(default=30.0, gt=0)
    # one archiver at a time holds a lease in Redis; a dead one frees it after this long
    lease_ttl_s: float = Field(default=120.0, gt=0)


class ClusterConfig(BaseModel):
    """The cluster rehearsal, `healmesh up --profile cluster` (``HEALMESH_CLUSTER__<NAME>``;
    healmesh.ops.cluster): every part its own home, as if on its own machine."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # the gateway instances behind the load balancer (which listens on gateway_port)
    gateway_ports: tuple[int, ...] = Field(default=(8010, 8011), min_length=2)
    # one uvicorn worker each: two instances on two cores already fill them
    gateway_workers: int = Field(default=1, ge=1)
    celery_workers: int = Field(default=2, ge=1, le=8)
    celery_concurrency: int = Field(default=2, ge=1)
    # each Celery worker serves its task logs to the api-server on its own port, from this one up
    worker_log_port: int = Field(default=8793, ge=1, le=65_000)
    # an account that may create roles and databases; `up` creates Airflow's and MLflow's, each with
    # its own generated password (a 0600 file under home/secrets)
    postgres_admin_url: str = "postgresql://postgres@127.0.0.1:5432/postgres"
    # the rehearsal's S3-compatible object store for the archive: moto in server mode, an in-memory
    # stand-in for S3 or MinIO (what it holds is lost when it restarts)
    s3_port: int = Field(default=9000, ge=1, le=65_535)
    archive_bucket: str = "healmesh-archive"
    # a task whose worker died is failed (then retried) after this long without a heartbeat
    # (Airflow's default, 300 s, would hold the loop five minutes per killed worker)
    task_heartbeat_timeout_s: int = Field(default=30, ge=5)


class RetrainConfig(BaseModel):
    """The retraining DAG: the window it reads, what a training set needs, and the gate
    (``HEALMESH_RETRAIN__<NAME>``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    window_records: int = Field(default=50_000, ge=100)
    min_labels: int = Field(default=1_000, ge=10)
    min_positives: int = Field(default=20, ge=2)
    reference_share: float = Field(default=0.3, ge=0, le=5)
    holdout_share: float = Field(default=0.3, gt=0, lt=1)
    # candidate and champion on the same recent holdout, DeLong's paired test (policies.gate):
    # HEALMESH_RETRAIN__GATE__MARGIN, __FLOOR, __ALPHA, __MIN_POSITIVES, __MIN_NEGATIVES
    gate: GateConfig = GateConfig()


class RolloutConfig(BaseModel):
    """The canary DAG's lease and retries (``HEALMESH_ROLLOUT__<NAME>``); its stages and checks are
    ``Settings.canary``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # One rollout at a time: the running rollout holds a lease in Redis, extended by every stage
    # check and by each promote/rollback try; it must outlast the longest retry delay below.
    lease_ttl_s: float = Field(default=900.0, gt=0)
    # promote and rollback retry with exponential backoff (delay x2 per try, capped); a promote
    # that still fails ends the rollout `failed` with the mesh back on the champion
    promote_retries: int = Field(default=3, ge=0)
    rollback_retries: int = Field(default=5, ge=0)
    retry_delay_s: float = Field(default=30.0, gt=0)
    retry_max_delay_s: float = Field(default=600.0, gt=0)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HEALMESH_", env_nested_delimiter="__", extra="ignore")

    home: Path = Field(default=Path(".healmesh"), description="state directory (MLflow db, caches)")

    # --- MLflow registry -------------------------------------------------------------------
    mlflow_tracking_uri: str | None = Field(
        default=None,
        description="tracking URI; MLFLOW_TRACKING_URI wins, else a SQLite store under home",
    )
    # default: healmesh-<the project's name> (healmesh.project)
    experiment_name: str = "healmesh"
    xgb_registered_name: str = "healmesh-xgboost"
    mlp_registered_name: str = "healmesh-mlp"
    champion_alias: str = "champion"
    challenger_alias: str = "challenger"
    # How often a scorer re-reads the registry aliases (seconds).
    alias_poll_s: float = Field(default=5.0, gt=0)
    # Per-request timeout for registry calls made by scorers (seconds).
    registry_timeout_s: float = Field(default=5.0, gt=0)

    # --- scorers ---------------------------------------------------------------------------
    xgb_port: int = 8001
    torch_port: int = 8002
    fallback_port: int = 8003
    # Adaptive batching. Chosen by `bench/scorer_bench.py` (see docs/architecture.md):
    # a batch size of 1 turns batching off (BentoML's batcher needs >= 2).
    xgb_max_batch_size: int = Field(default=64, ge=1)
    xgb_max_latency_ms: int = Field(default=1000, ge=1)
    torch_max_batch_size: int = Field(default=64, ge=1)
    torch_max_latency_ms: int = Field(default=1000, ge=1)
    fallback_max_batch_size: int = Field(default=64, ge=1)
    fallback_max_latency_ms: int = Field(default=1000, ge=1)
    # BentoML access log lines for scorers: off by default (measured: about 4 % of a scorer's CPU
    # at 500 req/s; the gateway's feature log and metrics already record every call).
    scorer_access_log: bool = False
    # OpenTelemetry spans for predict calls: off unless you export traces (BENTOML tracing
    # config). Measured: span handling halved a scorer's throughput (815 -> 1,535 req/s).
    scorer_tracing: bool = False
    # Intra-op threads for XGBoost and torch in a scorer process. Serving batches are small:
    # thread wake-ups cost more than they save, and spinning OpenMP threads steal the CPU
    # from the event loop that does the HTTP work.
    model_threads: int = Field(default=1, ge=1)
    # Admin hooks (fault injection, reload) are refused unless a token is set. `make up` generates
    # one into $HEALMESH_HOME/secrets/admin_token (see healmesh.credentials).
    admin_token: str | None = Field(default=None, min_length=8)
    # Who may post labels (POST /feedback): a token of its own, so a labelling service holds no
    # admin rights. The admin token may label too.
    labeller_token: str | None = Field(default=None, min_length=8)
    # Who may post alerts (POST /api/v1/alerts: Alertmanager's webhook): a token of its own, so
    # the Alertmanager holds no admin rights. The admin token may post alerts too.
    alerts_token: str | None = Field(default=None, min_length=8)
    # Torch device: "auto" picks CUDA when there is one.
    torch_device: str = "auto"

    # --- gateway ---------------------------------------------------------------------------
    gateway_port: int = 8000
    # Gateway worker processes (BentoML workers of one server, sharing its port). Default: 2 with
    # two CPUs or more, else 1. They share the routing state through Redis and export metrics
    # together; breakers, admission and readiness probes are per worker (docs/architecture.md).
    gateway_workers: int = Field(default_factory=default_gateway_workers, ge=1)
    # /livez answers 503 once the gateway server has run short of its workers this long. BentoML
    # replaces a dead worker within about 10 s, except in its container images (BENTOML_CONTAINERIZED),
    # where nothing would: the orchestrator's liveness probe then restarts the container.
    gateway_worker_missing_s: float = Field(default=60.0, gt=0)
    # A scorer given by URL is called there (another host or container); without a URL the
    # gateway reaches it through the BentoML composition (`bentoml serve` of the mesh).
    xgb_url: str | None = None
    torch_url: str | None = None
    fallback_url: str | None = None
    # A Redis of your own. Left unset, `make up` runs one (see redis_port) and the command line
    # finds it through $HEALMESH_HOME/run/redis.json (healmesh.redis_conn).
    redis_url: str = "redis://127.0.0.1:6379/0"
    # The Redis password (AUTH), or a file holding it; `make up` generates one for the Redis it
    # starts. A password inside redis_url works too. Never logged.
    redis_password: str | None = None
    redis_password_file: Path | None = None
    # Port of the Redis `make up` runs (with redis_url unset); when another Redis holds it, the
    # next free port above it.
    redis_port: int = Field(default=6379, ge=1, le=65_535)
    # Memory cap of that Redis (Redis units: 512mb, 1gb; 0 = none). Over it, only keys with a
    # TTL (per-request records) are evicted, shortest TTL first; control state, audit and
    # streams carry none and are never evicted (a write that needs room fails instead).
    redis_maxmemory: str = Field(default="1gb", pattern=r"(?i)^\d+(b|k|kb|m|mb|g|gb)?$")
    key_prefix: str = "healmesh"
    # Whole-request deadline; a model attempt may use it minus what the fallback needs.
    chain: ChainConfig = ChainConfig()
    sticky_routing: bool = True
    # Calls in flight per scorer endpoint; what arrives meanwhile is coalesced into one call of
    # up to upstream_max_rows rows (keep it <= the scorer's max_batch_size).
    upstream_max_in_flight: int = Field(default=4, ge=1)
    upstream_max_rows: int = Field(default=64, ge=1)
    max_body_bytes: int = Field(default=1_000_000, ge=1_024)
    max_batch_rows: int = Field(default=500, ge=1)
    # Adaptive concurrency limits (healmesh.policies.concurrency), per gateway worker: one for
    # admission (past it: 503 + Retry-After before the body is read) and one for each model
    # upstream (asked by the fallback chain before a call; every variant past its limit: 503,
    # never the fallback scorer). Shadow calls get only a share of either and go first.
    admission_limit: LimiterConfig = LimiterConfig()
    upstream_limit: LimiterConfig = LimiterConfig()
    # Circuit breakers (one per variant and for the fallback scorer)
    breaker: BreakerConfig = BreakerConfig()
    probe_interval_s: float = Field(default=1.0, gt=0)
    # The gateway is ready once every weighted model variant answered a test prediction, or, after
    # this long, once one does (a scorer that never starts must not keep the mesh out of service).
    ready_grace_s: float = Field(default=60.0, ge=0)
    retry_budget: RetryBudgetConfig = RetryBudgetConfig()
    # Shadow traffic: bounded in-flight calls, dropped (and counted) beyond.
    shadow_max_in_flight: int = Field(default=64, ge=1)
    shadow_timeout_ms: float = Field(default=1_000.0, gt=0)
    feature_log: FeatureLogConfig = FeatureLogConfig()
    # How long after its answer a request can still be labelled: its features stay in the stream
    # and its label slot in Redis this long (set it to your label delay; Redis memory grows with
    # rate x retention, see bench/results/feature_log.md). A later label goes to the archive.
    label_retention_s: int = Field(default=3_600, ge=60)
    # Past label_retention_s rows and labels live on in the archive (archive.retention_s): a label
    # for an older answer is stored as a "cold" label and joined from there (see label_limit_s).
    archive: ArchiveConfig = ArchiveConfig()
    control_poll_s: float = Field(default=0.5, gt=0)
    gateway_access_log: bool = False
    # Idle keep-alive of every server we start (`bentoml serve --timeout-keep-alive`). uvicorn's
    # 5 s default closes a connection a client is about to reuse whenever the server's loop is
    # late by that much; a client must idle out first (the gateway's pool keeps connections
    # half as long), as behind a load balancer with a 60 s idle timeout.
    server_keep_alive_s: int = Field(default=75, ge=1)
    gateway_tracing: bool = False

    # --- lifecycle: drift, retraining, canary rollout (the Airflow DAGs) --------------------
    # the DAGs change routing through its admin API; default: the local gateway (gateway_port)
    gateway_url: str | None = None
    drift_reports_dir: Path = Path("drift_reports")
    drift_schedule: str = "*/15 * * * *"
    drift_window_records: int = Field(default=10_000, ge=10)
    drift_window_minutes: float | None = Field(default=None, gt=0)
    drift: DriftThresholds = DriftThresholds()
    retrain: RetrainConfig = RetrainConfig()
    canary: CanaryConfig = CanaryConfig()
    rollout: RolloutConfig = RolloutConfig()
    # A retrained candidate that passed the gate waits this long for a running rollout to end
    # before it becomes the challenger (checking every challenger_poke_s); then it stays
    # registered without the alias.
    challenger_wait_s: float = Field(default=3600.0, gt=0)
    challenger_poke_s: float = Field(default=15.0, gt=0)
    mlflow_port: int = 5000
    # backend store of the MLflow server `make up` starts (default: SQLite under home)
    mlflow_backend_uri: str | None = None
    airflow_port: int = 8080
    # Prometheus (scrapes the mesh, evaluates deploy/prometheus/rules.yml) and the Alertmanager
    # it sends alerts to (which posts them to the gateway's POST /api/v1/alerts): healmesh.ops.alerting
    prometheus_port: int = Field(default=9090, ge=1, le=65_535)
    alertmanager_port: int = Field(default=9093, ge=1, le=65_535)
    # the cluster rehearsal (`healmesh up --profile cluster`)
    cluster: ClusterConfig = ClusterConfig()

    @model_validator(mode="before")
    @classmethod
    def _no_moved_env_names(cls, data: Any) -> Any:
        """A setting that moved into a group keeps no alias: its old env name would be ignored
        without a word (a breaker tuned in a manifest silently back on its defaults), so it fails."""
        stale = sorted(name for name in _moved_env_names() if name in os.environ)
        if stale:
            raise ValueError("renamed settings, set them by their new names: "
                             + ", ".join(f"{old} -> {_moved_env_names()[old]}" for old in stale))
        return data

    @model_validator(mode="before")
    @classmethod
    def _project_defaults(cls, data: Any) -> Any:
        """The project file's drift and gate settings and its experiment name, under whatever the
        environment sets: a variable still wins over the file, the file over the defaults."""
        from healmesh import project

        if not isinstance(data, dict):
            return data
        try:
            p = project.active()
        except project.ProjectError:
            return data  # `up` and every entry point report the file's error themselves
        out = dict(data)
        out.setdefault("experiment_name", f"healmesh-{p.name}")
        if p.drift:
            out["drift"] = {**p.drift, **dict(out.get("drift") or {})}
        if p.gate:
            retrain = dict(out.get("retrain") or {})
            retrain["gate"] = {**p.gate, **dict(retrain.get("gate") or {})}
            out["retrain"] = retrain
        return out

    @field_validator("home", "drift_reports_dir")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def configured_tracking_uri(self) -> str | None:
        """The tracking URI set from outside: ``MLFLOW_TRACKING_URI`` (read now: `healmesh up`
        sets it for what it runs), else ``mlflow_tracking_uri``; None when neither is set."""
        return os.environ.get("MLFLOW_TRACKING_URI") or self.mlflow_tracking_uri or None

    @property
    def tracking_uri(self) -> str:
        """Where this process reads and writes the registry: the configured URI, else the SQLite store
        under home (the same store the MLflow server of `healmesh up` serves)."""
        return self.configured_tracking_uri or f"sqlite:///{self.home / 'mlflow' / 'mlflow.db'}"

    @property
    def local_mlflow_uri(self) -> str:
        """The tracking URI of the stack: the configured one, else the MLflow server `healmesh up` runs."""
        return self.configured_tracking_uri or local_url(self.mlflow_port)

    @property
    def gateway_api_url(self) -> str:
        return self.gateway_url or local_url(self.gateway_port)

    @property
    def artifact_root(self) -> Path:
        return self.home / "mlflow" / "artifacts"

    @property
    def archive_url(self) -> str:
        """Where the archive lives: the configured URL, else ``<home>/archive``."""
        return self.archive.url or (self.home / "archive").as_uri()

    @property
    def label_limit_s(self) -> int:
        """How long after its answer a request may be labelled: the archive's retention when the
        archive is on (a label past the hot window is kept there), else the hot window's."""
        if self.archive.enabled:
            return max(self.archive.retention_s, self.label_retention_s)
        return self.label_retention_s

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"


@lru_cache(maxsize=1)
def _moved_env_names() -> dict[str, str]:
    """Old flat env name -> new nested one, for every field of every group (HEALMESH_BREAKER_OPEN_WAIT_S
    -> HEALMESH_BREAKER__OPEN_WAIT_S), plus the fields that changed their name on the way."""
    flat = {f"HEALMESH_{name}".upper() for name, f in Settings.model_fields.items()
            if not (isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel))}
    moved = {f"HEALMESH_{group}_{field}".upper(): f"HEALMESH_{group}__{field}".upper()
             for group, f in Settings.model_fields.items()
             if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)
             for field in f.annotation.model_fields}
    moved |= {"HEALMESH_RETRY_BUDGET_MIN": "HEALMESH_RETRY_BUDGET__MIN_PER_WINDOW",
              "HEALMESH_DEADLINE_MS": "HEALMESH_CHAIN__DEADLINE_S (seconds)",
              "HEALMESH_ATTEMPT_TIMEOUT_MS": "HEALMESH_CHAIN__ATTEMPT_TIMEOUT_S (seconds)",
              "HEALMESH_FALLBACK_RESERVE_MS": "HEALMESH_CHAIN__FALLBACK_RESERVE_S (seconds)",
              "HEALMESH_GATE_TOLERANCE": "HEALMESH_RETRAIN__GATE__MARGIN",
              "HEALMESH_RETRAIN__GATE_TOLERANCE": "HEALMESH_RETRAIN__GATE__MARGIN (a one-sided non-inferiority "
                                                  "margin now, with HEALMESH_RETRAIN__GATE__FLOOR)",
              # the fixed-length canary stage became the sequential judge's (issue 11)
              **{f"HEALMESH_CANARY__{name}": f"HEALMESH_CANARY__JUDGE__{new} (the sequential judge)"
                 for name, new in (("INTERVAL_S", "MIN_PASS_SAMPLES"), ("DEADLINE_S", "MAX_STAGE_S"),
                                   ("MIN_REQUESTS", "MIN_PASS_SAMPLES"), ("MIN_ERROR_SAMPLE", "MIN_PASS_SAMPLES"),
                                   ("MIN_LATENCY_SAMPLE", "MIN_PASS_SAMPLES"),
                                   ("MAX_ERROR_RATE_DELTA", "ERROR_MARGIN"), ("MAX_P95_RATIO", "LATENCY_MARGIN"),
                                   ("P95_SLACK_MS", "LATENCY_MARGIN"), ("MAX_AUC_DROP", "AUC_MARGIN"))},
              **{f"HEALMESH_FEATURE_{name}": f"HEALMESH_FEATURE_LOG__{name}"
                 for name in ("STREAM_MAXLEN", "BUFFER_MAX", "FLUSH_BATCH", "FLUSH_INTERVAL_MS")}}
    return {old: new for old, new in moved.items() if old not in flat}


def check_project_overrides(p: Any) -> None:
    """A project file's drift and gate sections, checked by the very config classes the settings
    use, so that a typo stops `up` with the field named (``project.ProjectError``)."""
    from pydantic import ValidationError

    from healmesh.project import ProjectError

    for section, config in (("drift", DriftThresholds), ("gate", GateConfig)):
        try:
            config.model_validate(getattr(p, section))
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(x) for x in first["loc"])
            raise ProjectError(f"{p.source}: {section}.{where}: {first['msg']}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
