"""The gateway's Prometheus series.

Import this module only inside the running worker (``GatewayMetrics()`` in the service's
``__init__``): prometheus_client must first see BentoML's PROMETHEUS_MULTIPROC_DIR, or the
series never reach ``/metrics``. Gauges use a multiprocess mode that gives one honest value
across gateway workers (``livemax``: an open breaker in any worker shows as open).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping

from prometheus_client import Counter, Gauge, Histogram

from healmesh.policies import routing

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)


class GatewayMetrics:
    def __init__(self) -> None:
        p = "healmesh_gateway"
        # Who answers a scrape: counters restart from 0 with a new instance, which a reader of
        # deltas (the canary analysis) must tell from a drop in traffic.
        self.instance_id = uuid.uuid4().hex[:16]
        self.instance_started = Gauge(f"{p}_instance_start_time_seconds",
                                      "Start time of each live gateway worker, by instance id.", ["instance_id"],
                                      multiprocess_mode="livemax")
        self.instance_started.labels(self.instance_id).set(time.time())
        self.requests = Counter(f"{p}_requests", "Answered predictions by variant, model version and outcome.",
                                ["variant", "model_version", "outcome"])
        self.latency = Histogram(f"{p}_request_latency_seconds",
                                 "Gateway latency of a prediction by variant and model version.",
                                 ["variant", "model_version"], buckets=LATENCY_BUCKETS)
        self.rejected = Counter(f"{p}_rejected_requests", "Requests refused before any work, by status.",
                                ["status"])
        self.upstream_calls = Counter(f"{p}_upstream_calls",
                                      "Requests sent to each upstream, by result (a coalesced call counts each "
                                      "request it carried).",
                                      ["upstream", "result"])
        self.upstream_latency = Histogram(f"{p}_upstream_latency_seconds", "Scorer call latency by upstream.",
                                          ["upstream"], buckets=LATENCY_BUCKETS)
        self.retries = Counter(f"{p}_retries", "Failover retries by decision.", ["decision"])
        self.breaker_state = Gauge(f"{p}_breaker_state", "Breaker state per upstream: 0 closed, 1 half-open, 2 open.",
                                   ["upstream"], multiprocess_mode="livemax")
        self.breaker_transitions = Counter(f"{p}_breaker_transitions", "Breaker transitions.",
                                           ["upstream", "from_state", "to_state"])
        self.weight = Gauge(f"{p}_weight", "Configured routing weight per variant.", ["variant"],
                            multiprocess_mode="livemax")
        self.effective_weight = Gauge(f"{p}_effective_weight", "Routing weight after breakers per variant.",
                                      ["variant"], multiprocess_mode="livemin")
        self.shadow_calls = Counter(f"{p}_shadow_calls", "Shadow calls by result (ok, error, dropped).", ["result"])
        self.shadow_compared = Counter(f"{p}_shadow_compared", "Shadow answers compared with the primary label.",
                                       ["agree"])
        self.shadow_agreement = Gauge(f"{p}_shadow_agreement_ratio",
                                      "Share of the last 1,000 shadow answers whose label matched the primary.",
                                      multiprocess_mode="livemax")
        self.log_records = Counter(f"{p}_feature_log_records",
                                   "Feature-log records by fate: written to Redis, spilled to the local spool "
                                   "(Redis away), replayed from it, dropped (lost).", ["state"])
        self.labels = Counter(f"{p}_labels", "Labels received, by result (stored, unchanged, unknown, conflict, "
                              "expired: after the retention, corrected: by an admin).", ["result"])
        self.log_buffered = Gauge(f"{p}_feature_log_buffered", "Feature-log records waiting in memory.",
                                  multiprocess_mode="livesum")
        self.log_flush_errors = Counter(f"{p}_feature_log_flush_errors", "Failed feature-log writes (Redis away).")
        self.redis_up = Gauge(f"{p}_redis_up", "1 when the last Redis operation succeeded.", multiprocess_mode="livemin")
        self.in_flight = Gauge(f"{p}_in_flight", "Requests being handled.", multiprocess_mode="livesum")
        self.drift_score = Gauge("healmesh_drift_score", "Latest drift statistic per feature (from the drift DAG).",
                                 ["feature", "statistic"], multiprocess_mode="livemax")
        self.drift_detected = Gauge("healmesh_drift_detected", "1 when the latest drift check decided drift.",
                                    multiprocess_mode="livemax")
        self.drift_share = Gauge("healmesh_drift_share_drifted", "Share of features drifted at the latest check.",
                                 multiprocess_mode="livemax")
        self.drift_checked_at = Gauge("healmesh_drift_last_check_timestamp_seconds", "When drift was last checked.",
                                      multiprocess_mode="livemax")
        self.rollout_stage = Gauge("healmesh_rollout_stage_percent", "Canary share of the XGBoost traffic (percent).",
                                   multiprocess_mode="livemax")
        self.rollout_info = Gauge("healmesh_rollout_info", "Rollout status and canary version (value 1).",
                                  ["status", "canary_version"], multiprocess_mode="livemax")
        self.control_version = Gauge(f"{p}_control_version", "Version of the control state this worker uses.",
                                     multiprocess_mode="livemin")
        for v in routing.VARIANTS + (routing.FALLBACK,):
            self.breaker_state.labels(v).set(0)
        # series with a fixed label set exist from the start at 0, so dashboards and alerts
        # (rate(), absent()) see "none yet" instead of "no data"
        for result in ("ok", "error", "dropped"):
            self.shadow_calls.labels(result)
        for agree in ("true", "false"):
            self.shadow_compared.labels(agree)
        for state in ("written", "dropped", "spilled", "replayed"):
            self.log_records.labels(state)
        for result in ("stored", "unchanged", "unknown", "conflict", "expired", "corrected"):
            self.labels.labels(result)
        for decision in ("allowed", "denied_deadline", "denied_budget"):
            self.retries.labels(decision)

    def publish_weights(self, configured: Mapping[str, float], effective: Mapping[str, float]) -> None:
        for v in routing.VARIANTS:
            self.weight.labels(v).set(configured.get(v, 0.0))
            self.effective_weight.labels(v).set(effective.get(v, 0.0))
