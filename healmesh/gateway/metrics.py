"""The gateway's Prometheus series.

Import this module only inside the running worker (``GatewayMetrics()`` in the service's
``__init__``): prometheus_client must first see BentoML's PROMETHEUS_MULTIPROC_DIR, or the
series never reach ``/metrics``.

Every worker of a gateway server writes its own files in that directory and any worker answers
a scrape with all of them: counters and histograms are summed over the workers (a dead worker's
counts stay, so totals never drop), and each gauge names how its workers' values combine, in
its help text (``livesum``: in flight, buffered; ``livemax``: an open breaker in any worker
shows as open; ``livemin``: Redis up only if every worker reaches it). "live" modes read only
the files of live workers, which prometheus_client learns from ``mark_process_dead``: BentoML
calls it for a worker that exits, never for one that was killed, so every worker forgets the
gauges of dead ones at start and every ``FORGET_EVERY_S`` (``forget_dead_workers``).
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram, multiprocess

from healmesh.policies import routing

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5)
FORGET_EVERY_S = 5.0
_LIVE_GAUGE_FILE = re.compile(r"^gauge_live[a-z]+_(\d+)\.db$")


def forget_dead_workers(directory: str | os.PathLike[str] | None = None) -> list[int]:
    """Remove the live-gauge files of processes that are gone (a SIGKILLed worker never marks
    itself dead): its in-flight count, breaker states, control version and instance id would
    otherwise stay in every scrape. Counter and histogram files stay: their counts happened.
    Returns the pids forgotten."""
    import psutil

    path = directory or os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path or not Path(path).is_dir():
        return []
    pids = {int(m.group(1)) for name in os.listdir(path) if (m := _LIVE_GAUGE_FILE.match(name))}
    dead = sorted(pid for pid in pids if not psutil.pid_exists(pid))
    for pid in dead:
        with contextlib.suppress(FileNotFoundError):  # another worker removed it first
            multiprocess.mark_process_dead(pid, str(path))
    return dead


class GatewayMetrics:
    def __init__(self) -> None:
        p = "healmesh_gateway"
        self.pid = os.getpid()
        self._forgotten_at = time.monotonic()
        forget_dead_workers()  # a worker replacing a killed one: its gauges go first
        # Who answers a scrape: counters restart from 0 with a new instance, which a reader of
        # deltas (the canary analysis) must tell from a drop in traffic. It is also the worker's
        # name in answers (the X-Healmesh-Worker header, GET /api/v1/admin/state).
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
        self.breaker_state = Gauge(f"{p}_breaker_state",
                                   "Breaker state per upstream: 0 closed, 1 half-open, 2 open (the highest of the "
                                   "live workers: each worker has its own breakers).",
                                   ["upstream"], multiprocess_mode="livemax")
        self.breaker_transitions = Counter(f"{p}_breaker_transitions", "Breaker transitions.",
                                           ["upstream", "from_state", "to_state"])
        self.weight = Gauge(f"{p}_weight",
                            "Configured routing weight per variant (the highest of the live workers; they "
                            "differ only until the last one has read a change).", ["variant"],
                            multiprocess_mode="livemax")
        self.effective_weight = Gauge(f"{p}_effective_weight",
                                      "Routing weight after breakers per variant (the lowest of the live workers).",
                                      ["variant"], multiprocess_mode="livemin")
        self.shadow_calls = Counter(f"{p}_shadow_calls", "Shadow calls by result (ok, error, dropped).", ["result"])
        self.shadow_compared = Counter(f"{p}_shadow_compared", "Shadow answers compared with the primary label.",
                                       ["agree"])
        self.shadow_agreement = Gauge(f"{p}_shadow_agreement_ratio",
                                      "Share of the last 1,000 shadow answers whose label matched the primary "
                                      "(the lowest of the live workers, each over its own answers; across workers "
                                      "and replicas use the rate of shadow_compared_total).",
                                      multiprocess_mode="livemin")
        self.log_records = Counter(f"{p}_feature_log_records",
                                   "Feature-log records by fate: written to Redis, spilled to the local spool "
                                   "(Redis away), replayed from it, dropped (lost).", ["state"])
        self.labels = Counter(f"{p}_labels", "Labels received, by result (stored, unchanged, unknown, conflict, "
                              "expired: after the retention, corrected: by an admin).", ["result"])
        self.log_buffered = Gauge(f"{p}_feature_log_buffered",
                                  "Feature-log records waiting in memory (all live workers).",
                                  multiprocess_mode="livesum")
        self.log_flush_errors = Counter(f"{p}_feature_log_flush_errors", "Failed feature-log writes (Redis away).")
        self.redis_up = Gauge(f"{p}_redis_up", "1 when every live worker's last Redis operation succeeded.",
                               multiprocess_mode="livemin")
        self.in_flight = Gauge(f"{p}_in_flight", "Requests being handled (all live workers).",
                               multiprocess_mode="livesum")
        self.shed = Counter(f"{p}_shed", "Requests and shadow calls shed under load, by where: admission (the "
                            "worker's limit), variants (every model variant busy), shadow (a mirror call dropped).",
                            ["where"])
        self.concurrency_limit = Gauge(f"{p}_concurrency_limit",
                                       "Adaptive concurrency limit by scope: admission, or a model variant (summed "
                                       "over the live workers: each worker has its own).", ["scope"],
                                       multiprocess_mode="livesum")
        self.limit_in_flight = Gauge(f"{p}_concurrency_in_flight",
                                     "Requests holding a slot of each concurrency limit (all live workers).",
                                     ["scope"], multiprocess_mode="livesum")
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
        self.control_version = Gauge(f"{p}_control_version",
                                     "Version of the control state every live worker has read (the lowest).",
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
        for result in ("stored", "stored_cold", "unchanged", "unknown", "conflict", "expired", "corrected"):
            self.labels.labels(result)
        for decision in ("allowed", "denied_deadline", "denied_budget"):
            self.retries.labels(decision)
        for where in ("admission", "variants", "shadow"):
            self.shed.labels(where)

    def upstream_call(self, upstream: str, outcome: str, seconds: float) -> None:
        """One call to an upstream, primary or shadow (the canary judge reads these counters)."""
        self.upstream_calls.labels(upstream, outcome).inc()
        self.upstream_latency.labels(upstream).observe(seconds)

    def forget_dead_workers(self) -> None:
        """``forget_dead_workers`` every ``FORGET_EVERY_S`` (the control poll calls it): where
        BentoML does not replace a dead worker (in a container), nothing else would."""
        now = time.monotonic()
        if now - self._forgotten_at >= FORGET_EVERY_S:
            self._forgotten_at = now
            forget_dead_workers()

    def publish_weights(self, configured: Mapping[str, float], effective: Mapping[str, float]) -> None:
        for v in routing.VARIANTS:
            self.weight.labels(v).set(configured.get(v, 0.0))
            self.effective_weight.labels(v).set(effective.get(v, 0.0))
