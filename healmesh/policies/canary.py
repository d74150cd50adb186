"""Canary analysis: is the canary worse than stable? Pure functions (metrics text and labelled
answers in, a verdict out), one linear pass with early returns, as Flagger's scheduler does.

Per stage, compared over the same interval: error rate and p95 latency of each upstream from
the gateway's Prometheus counters and histograms (deltas between two scrapes), and, where
enough labels arrived, live ROC AUC. A pass needs the evidence of every check: at least
``pass_sample`` canary calls (the largest of ``min_requests``, ``min_error_sample`` and
``min_latency_sample``), so no check is skipped for want of data. A stage that has not seen them
by ``deadline_s`` fails: too little data is not a pass. The counts are increases accumulated by
``healmesh.policies.evidence.CounterEvidence``, which survives gateway restarts; they are never negative.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, model_validator

from healmesh.errors import InvalidData
from healmesh.policies.quality import live_auc

FAILURES = ("error", "timeout", "unreachable")
CALLS = "healmesh_gateway_upstream_calls_total"
LATENCY = "healmesh_gateway_upstream_latency_seconds_bucket"


class CanaryConfig(BaseModel):
    """Frozen and validated; it is also ``Settings.canary`` (env ``HEALMESH_CANARY__<FIELD>``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stages: tuple[int, ...] = (10, 50, 100)
    interval_s: float = 60.0
    deadline_s: float = 180.0
    check_every_s: float = 5.0
    min_requests: int = 100
    min_error_sample: int = 10
    min_latency_sample: int = 100  # p95 of fewer calls is little more than their maximum
    max_error_rate_delta: float = 0.02
    max_p95_ratio: float = 1.5
    p95_slack_ms: float = 25.0
    min_quality_labels: int = 200
    min_quality_positives: int = 5
    max_auc_drop: float = 0.03

    @model_validator(mode="after")
    def _check(self) -> CanaryConfig:
        def need(ok: bool, what: str, value: object) -> None:
            if not ok:
                raise ValueError(f"{what}, but was {value!r}")

        if (not self.stages or list(self.stages) != sorted(set(self.stages))
                or not all(0 < s <= 100 for s in self.stages)):
            raise ValueError(f"stages must rise strictly within 1..100, but were {self.stages}")
        for name in ("interval_s", "deadline_s", "check_every_s"):
            need(getattr(self, name) > 0, f"{name} must be > 0", getattr(self, name))
        if self.deadline_s < self.interval_s:
            raise ValueError(f"deadline_s must be >= interval_s, but was {self.deadline_s} < {self.interval_s}")
        for name in ("min_requests", "min_error_sample", "min_latency_sample", "min_quality_positives"):
            need(getattr(self, name) >= 1, f"{name} must be >= 1", getattr(self, name))
        need(self.min_quality_labels >= 10, "min_quality_labels must be >= 10", self.min_quality_labels)
        for name in ("max_error_rate_delta", "p95_slack_ms", "max_auc_drop"):
            need(getattr(self, name) >= 0, f"{name} must be >= 0", getattr(self, name))
        need(self.max_p95_ratio >= 1, "max_p95_ratio must be >= 1", self.max_p95_ratio)
        return self

    @property
    def pass_sample(self) -> int:
        """Canary calls a pass needs: enough for every check to have run, not just some."""
        return max(self.min_requests, self.min_error_sample, self.min_latency_sample)


@dataclass(frozen=True)
class UpstreamStats:
    calls: float  # calls with a verdict (overload excluded: it says nothing about the model)
    failures: float
    p95_s: float | None
    p50_s: float | None = None

    def __post_init__(self) -> None:
        # a negative count can only come from a counter reset read as a delta: never judge it
        if self.calls < 0 or self.failures < 0 or self.failures > self.calls:
            raise InvalidData(f"calls and failures must satisfy 0 <= failures <= calls, but were "
                              f"{self.failures} of {self.calls}")

    @property
    def error_rate(self) -> float:
        return self.failures / self.calls if self.calls else 0.0


@dataclass(frozen=True)
class Quality:
    labelled: int
    positives: int
    auc: float | None


class StageStatus(StrEnum):
    """What a stage's analysis says now (the rollout's events carry the value)."""

    PASS = "pass"
    FAIL = "fail"
    WAIT = "wait"  # not enough canary calls yet, deadline not reached


PASS, FAIL, WAIT = StageStatus.PASS, StageStatus.FAIL, StageStatus.WAIT


@dataclass(frozen=True)
class Verdict:
    status: StageStatus
    reasons: tuple[str, ...] = ()
    details: Mapping[str, Any] = field(default_factory=dict)


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_metrics(text: str) -> Samples:
    from prometheus_client.parser import text_string_to_metric_families

    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            out[key] = out.get(key, 0.0) + float(s.value)
    return out


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """Prometheus's interpolation over cumulative (upper bound, count) buckets."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in ordered:
        if count >= rank:
            if math.isinf(le):
                return prev_le
            span = count - prev_count
            return prev_le + (le - prev_le) * ((rank - prev_count) / span if span else 0.0)
        prev_le, prev_count = le, count
    return ordered[-1][0]


def stats_from_increases(increases: Samples, upstream: str) -> UpstreamStats:
    """One upstream's calls, failures and latency quantiles from counter increases (never negative)."""
    by_result: dict[str, float] = {}
    pairs: list[tuple[float, float]] = []
    for (name, labels), value in increases.items():
        lab = dict(labels)
        if lab.get("upstream") != upstream:
            continue
        if name == CALLS:
            by_result[lab["result"]] = by_result.get(lab["result"], 0.0) + value
        elif name == LATENCY:
            pairs.append((float(lab["le"]), value))
    failures = sum(by_result.get(r, 0.0) for r in FAILURES)
    judged = failures + by_result.get("ok", 0.0)
    return UpstreamStats(calls=judged, failures=failures, p95_s=histogram_quantile(0.95, pairs),
                         p50_s=histogram_quantile(0.5, pairs))


def quality(labels: np.ndarray, probabilities: np.ndarray, cfg: CanaryConfig) -> Quality:
    auc = live_auc(labels, probabilities, cfg.min_quality_labels, cfg.min_quality_positives)
    return Quality(len(labels), int(np.sum(labels)), auc)


def _slower(canary: float | None, stable: float | None, cfg: CanaryConfig) -> bool:
    return canary is not None and stable is not None and canary > stable * cfg.max_p95_ratio + cfg.p95_slack_ms / 1000.0


def analyse(canary: UpstreamStats, stable: UpstreamStats, elapsed_s: float, cfg: CanaryConfig, *,
            canary_breaker_open: bool = False, canary_quality: Quality | None = None,
            stable_quality: Quality | None = None) -> Verdict:
    details = {"canary": canary.__dict__, "stable": stable.__dict__, "elapsed_s": round(elapsed_s, 1),
               "canary_quality": canary_quality.__dict__ if canary_quality else None,
               "stable_quality": stable_quality.__dict__ if stable_quality else None}
    if canary_breaker_open:
        return Verdict(FAIL, ("the canary's circuit breaker is open",), details)
    if canary.calls >= cfg.min_error_sample and canary.error_rate > stable.error_rate + cfg.max_error_rate_delta:
        return Verdict(FAIL, (f"canary error rate {canary.error_rate:.1%} against stable {stable.error_rate:.1%} "
                                f"(allowed +{cfg.max_error_rate_delta:.1%})",), details)
    if (canary.calls >= cfg.min_latency_sample and _slower(canary.p95_s, stable.p95_s, cfg)
            and _slower(canary.p50_s, stable.p50_s, cfg)):
        # the median must agree: on a busy host one stall moves a few calls' tail, while a slow
        # model moves every call (measured: a CI run saw canary p95 156 ms vs 44 ms from stalls)
        assert canary.p95_s is not None and stable.p95_s is not None  # _slower said both are measured
        return Verdict(FAIL, (f"canary p95 {canary.p95_s * 1000:.0f} ms against stable {stable.p95_s * 1000:.0f} ms "
                                f"(allowed x{cfg.max_p95_ratio} + {cfg.p95_slack_ms:.0f} ms)",), details)
    if (canary_quality and stable_quality and canary_quality.auc is not None and stable_quality.auc is not None
            and canary_quality.auc < stable_quality.auc - cfg.max_auc_drop):
        return Verdict(FAIL, (f"canary live AUC {canary_quality.auc:.3f} against stable {stable_quality.auc:.3f} "
                                f"(allowed -{cfg.max_auc_drop})",), details)
    if elapsed_s < cfg.interval_s:
        return Verdict(WAIT, (), details)
    if canary.calls >= cfg.pass_sample:
        return Verdict(PASS, (f"{canary.calls:.0f} canary calls, error rate {canary.error_rate:.1%}",), details)
    if elapsed_s >= cfg.deadline_s:
        return Verdict(FAIL, (f"only {canary.calls:.0f} canary calls by the {cfg.deadline_s:.0f} s deadline "
                                f"(needs {cfg.pass_sample})",), details)
    return Verdict(WAIT, (), details)
