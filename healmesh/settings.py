"""The one settings object. Every knob is an environment variable ``HEALMESH_<NAME>``.

Defaults are the embedded, single-machine set-up (`make up`): everything lives under
``HEALMESH_HOME`` (``./.healmesh``), MLflow is a local SQLite store unless
``MLFLOW_TRACKING_URI`` points at a server.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HEALMESH_", extra="ignore")

    home: Path = Field(default=Path(".healmesh"), description="state directory (MLflow db, caches)")

    # --- MLflow registry -------------------------------------------------------------------
    mlflow_tracking_uri: str | None = Field(
        default=None,
        description="tracking URI; MLFLOW_TRACKING_URI wins, else a SQLite store under home",
    )
    experiment_name: str = "healmesh-fraud"
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
    # Torch device: "auto" picks CUDA when there is one.
    torch_device: str = "auto"

    # --- gateway ---------------------------------------------------------------------------
    gateway_port: int = 8000
    gateway_workers: int = Field(default=1, ge=1)
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
    deadline_ms: float = Field(default=800.0, gt=0)
    attempt_timeout_ms: float = Field(default=500.0, gt=0)
    fallback_reserve_ms: float = Field(default=100.0, ge=0)
    sticky_routing: bool = True
    # Calls in flight per scorer endpoint; what arrives meanwhile is coalesced into one call of
    # up to upstream_max_rows rows (keep it <= the scorer's max_batch_size).
    upstream_max_in_flight: int = Field(default=4, ge=1)
    upstream_max_rows: int = Field(default=64, ge=1)
    max_body_bytes: int = Field(default=1_000_000, ge=1_024)
    max_batch_rows: int = Field(default=500, ge=1)
    # Admission control: beyond this many requests in flight per worker the gateway sheds
    # with 503 + Retry-After instead of queueing.
    max_in_flight: int = Field(default=1_024, ge=1)
    # Circuit breakers (one per variant and for the fallback scorer)
    breaker_consecutive_failures: int = Field(default=5, ge=1)
    breaker_failure_rate: float = Field(default=0.5, gt=0, le=1)
    breaker_min_calls: int = Field(default=20, ge=1)
    breaker_window_s: float = Field(default=10.0, gt=0)
    breaker_open_wait_s: float = Field(default=5.0, gt=0)
    breaker_half_open_probes: int = Field(default=3, ge=1)
    breaker_probes_to_close: int = Field(default=3, ge=1)
    breaker_ramp: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    breaker_ramp_step_s: float = Field(default=2.0, gt=0)
    probe_interval_s: float = Field(default=1.0, gt=0)
    # The gateway is ready once every weighted model variant answered a test prediction, or, after
    # this long, once one does (a scorer that never starts must not keep the mesh out of service).
    ready_grace_s: float = Field(default=60.0, ge=0)
    retry_budget_ratio: float = Field(default=0.2, ge=0, le=1)
    retry_budget_window_s: int = Field(default=10, ge=1)
    retry_budget_min: int = Field(default=10, ge=0)
    # Shadow traffic: bounded in-flight calls, dropped (and counted) beyond.
    shadow_max_in_flight: int = Field(default=64, ge=1)
    shadow_timeout_ms: float = Field(default=1_000.0, gt=0)
    # Feature log: a Redis stream, written off the hot path.
    feature_stream_maxlen: int = Field(default=1_000_000, ge=1_000)
    feature_buffer_max: int = Field(default=100_000, ge=1)
    feature_flush_batch: int = Field(default=256, ge=1)
    feature_flush_interval_ms: float = Field(default=20.0, gt=0)
    # How long after its answer a request can still be labelled: its features stay in the stream
    # and its label slot in Redis this long (set it to your label delay; Redis memory grows with
    # rate x retention, see bench/results/feature_log.md). A later label is answered 410.
    label_retention_s: int = Field(default=3_600, ge=60)
    control_poll_s: float = Field(default=0.5, gt=0)
    gateway_access_log: bool = False
    # Idle keep-alive of every server we start (`bentoml serve --timeout-keep-alive`). uvicorn's
    # 5 s default closes a connection a client is about to reuse whenever the server's loop is
    # late by that much; a client must idle out first (the gateway's pool keeps connections
    # half as long), as behind a load balancer with a 60 s idle timeout.
    server_keep_alive_s: int = Field(default=75, ge=1)
    gateway_tracing: bool = False

    # --- lifecycle: drift, retraining, canary rollout (the Airflow DAGs) --------------------
    gateway_url: str = "http://127.0.0.1:8000"  # the DAGs change routing through its admin API
    drift_reports_dir: Path = Path("drift_reports")
    drift_schedule: str = "*/15 * * * *"
    drift_window_records: int = Field(default=10_000, ge=10)
    drift_window_minutes: float | None = Field(default=None, gt=0)
    drift_psi: float = Field(default=0.2, gt=0)
    drift_psi_alert: float = Field(default=0.25, gt=0)
    drift_ks_stat: float = Field(default=0.1, gt=0)
    drift_p_value: float = Field(default=0.01, gt=0, lt=1)
    drift_js: float = Field(default=0.1, gt=0)
    drift_share: float = Field(default=0.3, gt=0, le=1)
    drift_min_window: int = Field(default=500, ge=10)
    drift_auc_drop: float = Field(default=0.05, gt=0)
    retrain_window_records: int = Field(default=50_000, ge=100)
    retrain_min_labels: int = Field(default=1_000, ge=10)
    retrain_min_positives: int = Field(default=20, ge=2)
    retrain_reference_share: float = Field(default=0.3, ge=0, le=5)
    retrain_holdout_share: float = Field(default=0.3, gt=0, lt=1)
    # the candidate may trail the champion by at most this much ROC AUC on the shared holdout
    gate_tolerance: float = Field(default=0.005, ge=0)
    canary_stages: tuple[int, ...] = (10, 50, 100)
    canary_interval_s: float = Field(default=60.0, gt=0)
    canary_deadline_s: float = Field(default=180.0, gt=0)
    canary_check_every_s: float = Field(default=5.0, gt=0)
    canary_min_requests: int = Field(default=100, ge=1)
    canary_min_latency_sample: int = Field(default=100, ge=1)
    canary_max_error_rate_delta: float = Field(default=0.02, ge=0)
    canary_max_p95_ratio: float = Field(default=1.5, ge=1)
    canary_p95_slack_ms: float = Field(default=25.0, ge=0)
    canary_min_quality_labels: int = Field(default=200, ge=10)
    canary_min_quality_positives: int = Field(default=5, ge=1)
    canary_max_auc_drop: float = Field(default=0.03, ge=0)
    # One rollout at a time: the running rollout holds a lease in Redis, extended by every stage
    # check and by each promote/rollback try; it must outlast the longest retry delay below.
    rollout_lease_ttl_s: float = Field(default=900.0, gt=0)
    # promote and rollback retry with exponential backoff (delay x2 per try, capped); a promote
    # that still fails ends the rollout `failed` with the mesh back on the champion
    rollout_promote_retries: int = Field(default=3, ge=0)
    rollout_rollback_retries: int = Field(default=5, ge=0)
    rollout_retry_delay_s: float = Field(default=30.0, gt=0)
    rollout_retry_max_delay_s: float = Field(default=600.0, gt=0)
    # A retrained candidate that passed the gate waits this long for a running rollout to end
    # before it becomes the challenger (checking every challenger_poke_s); then it stays
    # registered without the alias.
    challenger_wait_s: float = Field(default=3600.0, gt=0)
    challenger_poke_s: float = Field(default=15.0, gt=0)
    mlflow_port: int = 5000
    # backend store of the MLflow server `make up` starts (default: SQLite under home)
    mlflow_backend_uri: str | None = None
    airflow_port: int = 8080

    @field_validator("home", "drift_reports_dir")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def tracking_uri(self) -> str:
        env = os.environ.get("MLFLOW_TRACKING_URI")
        if env:
            return env
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{self.home / 'mlflow' / 'mlflow.db'}"

    @property
    def artifact_root(self) -> Path:
        return self.home / "mlflow" / "artifacts"

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
