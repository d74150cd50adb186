"""Canary analysis: is the canary worse than stable? Pure functions (metrics text and live
answers in, a verdict out); the decision itself is the sequential judge's
(``healmesh.policies.sequential``): anytime-valid, so it may be read after every check.

Per stage, the judge reads three kinds of evidence, each a comparison of canary with stable:
- error rate: calls and failures of each upstream from the gateway's counters (increases
  accumulated by ``healmesh.policies.evidence.CounterEvidence``, which survives gateway restarts);
- latency: the mean of log latency per call, from the same counters' latency histogram (each
  bucket's calls at the middle of the bucket in log space, plus the spread of a value uniform in
  it, so both variants are read through the same buckets);
- quality: live AUC with DeLong's variance where enough labels came back for both variants; until
  then AUC estimated from each version's calibrated probabilities (CBPE,
  ``healmesh.policies.estimation``), so quality is judged before labels arrive;
- in the shadow stage also disagreement: the share of the challenger's decisions (positive or not)
  unlike the champion's on the same requests.

An open canary breaker fails the stage at once. Otherwise the judge answers pass, rollback or
continue, and a stage that stays undecided until its limit (calls or seconds) is rolled back:
too little evidence is never a pass.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from healmesh.errors import InvalidData
from healmesh.policies.checks import need
from healmesh.policies.estimation import estimate
from healmesh.policies.quality import auc_variance, live_auc
from healmesh.policies.sequential import AucDiff, Evidence, JudgeConfig, Judgement, MeanDiff, Outcome, Stream, judge

FAILURES = ("error", "timeout", "unreachable")
CALLS = "healmesh_gateway_upstream_calls_total"
LATENCY = "healmesh_gateway_upstream_latency_seconds_bucket"


class CanaryConfig(BaseModel):
    """Frozen and validated; it is also ``Settings.canary`` (env ``HEALMESH_CANARY__<FIELD>``, the
    judge's ``HEALMESH_CANARY__JUDGE__<FIELD>``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stages: tuple[int, ...] = (10, 50, 100)
    # a shadow stage before the first: the challenger scores mirrored live traffic, no user sees its
    # answers; judged on errors, latency, estimated quality and disagreement with the champion
    shadow: bool = True
    check_every_s: float = 5.0
    judge: JudgeConfig = Field(default=JudgeConfig())
    # labelled AUC replaces the estimate once both variants have this many labels and positives
    min_quality_labels: int = 200
    min_quality_positives: int = 10
    # estimated AUC (no labels) from this many answers of each variant; 0 turns the estimate off
    min_estimate_answers: int = 200

    @model_validator(mode="after")
    def _check(self) -> CanaryConfig:
        if (not self.stages or list(self.stages) != sorted(set(self.stages))
                or not all(0 < s <= 100 for s in self.stages)):
            raise ValueError(f"stages must rise strictly within 1..100, but were {self.stages}")
        need(self.check_every_s > 0, "check_every_s must be > 0", self.check_every_s)
        need(self.min_quality_labels >= 10, "min_quality_labels must be >= 10", self.min_quality_labels)
        need(self.min_quality_positives >= 2, "min_quality_positives must be >= 2", self.min_quality_positives)
        need(self.min_estimate_answers >= 0, "min_estimate_answers must be >= 0", self.min_estimate_answers)
        return self


@dataclass(frozen=True)
class UpstreamStats:
    calls: float  # calls with a verdict (overload excluded: it says nothing about the model)
    failures: float
    p95_s: float | None
    p50_s: float | None = None
    log_latency: Stream | None = None  # per-call log(seconds), from the histogram

    def __post_init__(self) -> None:
        # a negative count can only come from a counter reset read as a delta: never judge it
        if self.calls < 0 or self.failures < 0 or self.failures > self.calls:
            raise InvalidData(f"calls and failures must satisfy 0 <= failures <= calls, but were "
                              f"{self.failures} of {self.calls}")

    @property
    def error_rate(self) -> float:
        return self.failures / self.calls if self.calls else 0.0

    def sums(self) -> dict[str, float]:
        """What pools across stages (``pooled``): counts and the latency stream's running sums."""
        lat = self.log_latency or Stream(0, 0.0, 0.0)
        return {"calls": self.calls, "failures": self.failures, "latency_n": lat.n,
                "latency_sum": lat.n * lat.mean, "latency_sum_sq": (lat.n - 1) * lat.var + lat.n * lat.mean ** 2
                if lat.n > 0 else 0.0}

    def as_dict(self) -> dict[str, Any]:
        lat = self.log_latency
        return {"calls": self.calls, "failures": self.failures, "error_rate": round(self.error_rate, 5),
                "p95_s": self.p95_s, "p50_s": self.p50_s,
                "geomean_latency_s": round(math.exp(lat.mean), 5) if lat and lat.n else None, "sums": self.sums()}


def pooled(stats: UpstreamStats, earlier: Iterable[Mapping[str, float]]) -> UpstreamStats:
    """``stats`` plus what the same variant served in earlier stages (their ``sums()``): stable's
    baseline at a stage where it serves little or nothing (100 %). Quantiles stay this stage's."""
    calls, failures = stats.calls, stats.failures
    lat = stats.sums()
    n, total, total_sq = lat["latency_n"], lat["latency_sum"], lat["latency_sum_sq"]
    for e in earlier:
        calls, failures = calls + e["calls"], failures + e["failures"]
        n, total, total_sq = n + e["latency_n"], total + e["latency_sum"], total_sq + e["latency_sum_sq"]
    return UpstreamStats(calls, failures, stats.p95_s, stats.p50_s, Stream.from_sums(int(n), total, total_sq))


class StageStatus(StrEnum):
    """What a stage's analysis says now (the rollout's events carry the value)."""

    PASS = "pass"
    FAIL = "fail"
    WAIT = "wait"  # the judge is undecided, the stage's limits not reached


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


def log_latency_stream(buckets: Iterable[tuple[float, float]]) -> Stream:
    """Per-call log(latency) from cumulative (upper bound, count) buckets: a bucket's calls sit at
    its middle in log space with the variance of a value uniform across it (width^2 / 12). The
    first bucket starts at half its bound, the +Inf bucket is read as twice the last bound."""
    ordered = sorted(buckets)
    n, total, total_sq = 0, 0.0, 0.0
    prev_le, prev_count = None, 0.0
    for le, count in ordered:
        c = round(count - prev_count)
        if c > 0:
            lo = prev_le if prev_le is not None else le / 2.0
            if math.isinf(le):
                mid, width = math.log(2.0 * lo), 0.0
            else:
                mid, width = (math.log(lo) + math.log(le)) / 2.0, math.log(le) - math.log(lo)
            n, total, total_sq = n + c, total + c * mid, total_sq + c * (mid * mid + width * width / 12.0)
        prev_le, prev_count = le, max(count, prev_count)
    return Stream.from_sums(n, total, total_sq)


def stats_from_increases(increases: Samples, upstream: str) -> UpstreamStats:
    """One upstream's calls, failures and latency from counter increases (never negative)."""
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
                         p50_s=histogram_quantile(0.5, pairs), log_latency=log_latency_stream(pairs))


@dataclass(frozen=True)
class Answers:
    """One variant's live answers in the stage: every served probability, and the labelled ones."""

    probabilities: np.ndarray
    labelled_probabilities: np.ndarray
    labels: np.ndarray


def _labelled_auc(a: Answers, cfg: CanaryConfig) -> tuple[float, float] | None:
    y = np.asarray(a.labels).astype(int)
    auc = live_auc(y, a.labelled_probabilities, cfg.min_quality_labels, cfg.min_quality_positives)
    if auc is None or len(y) - int(y.sum()) < cfg.min_quality_positives:
        return None
    return auc, auc_variance(y, a.labelled_probabilities)


def _estimated_auc(a: Answers, cfg: CanaryConfig) -> tuple[float, float] | None:
    if cfg.min_estimate_answers == 0 or len(a.probabilities) < max(cfg.min_estimate_answers, 2):
        return None
    est = estimate(a.probabilities, 0.5)
    if not (math.isfinite(est.estimated_auc) and math.isfinite(est.auc_se)):
        return None
    return est.estimated_auc, est.auc_se ** 2


def quality_evidence(canary: Answers, stable: Answers, cfg: CanaryConfig) -> AucDiff | None:
    """Labelled AUCs when both variants have enough labels; else AUCs estimated from the served
    probabilities when both have enough answers; else None (no quality evidence yet)."""
    c, s = _labelled_auc(canary, cfg), _labelled_auc(stable, cfg)
    if c is not None and s is not None:
        return AucDiff(c[0], c[1], s[0], s[1], len(canary.labels))
    c, s = _estimated_auc(canary, cfg), _estimated_auc(stable, cfg)
    if c is not None and s is not None:
        return AucDiff(c[0], c[1], s[0], s[1], len(canary.probabilities), estimated=True)
    return None


def disagreement_evidence(compared: int, disagreed: int) -> MeanDiff | None:
    """The shadow stage's decisions unlike the champion's, against none (the champion agrees with
    itself); None before two answers were compared."""
    if compared < 2:
        return None
    return MeanDiff(Stream.bernoulli(compared, min(disagreed, compared)), Stream(compared, 0.0, 0.0))


def evidence(canary: UpstreamStats, stable: UpstreamStats, elapsed_s: float,
             quality: AucDiff | None = None, disagreement: MeanDiff | None = None,
             proven_better: float | None = None) -> Evidence:
    def latency(u: UpstreamStats) -> Stream:
        return u.log_latency or Stream(0, 0.0, 0.0)

    errors = MeanDiff(Stream.bernoulli(int(canary.calls), int(canary.failures)),
                      Stream.bernoulli(int(stable.calls), int(stable.failures)))
    return Evidence(canary_calls=int(canary.calls), elapsed_s=elapsed_s, error_rate=errors,
                    latency=MeanDiff(latency(canary), latency(stable)), quality=quality, disagreement=disagreement,
                    proven_better=proven_better)


def analyse(canary: UpstreamStats, stable: UpstreamStats, elapsed_s: float, cfg: CanaryConfig, *,
            canary_breaker_open: bool = False, quality: AucDiff | None = None,
            disagreement: MeanDiff | None = None, proven_better: float | None = None) -> Verdict:
    details: dict[str, Any] = {"canary": canary.as_dict(), "stable": stable.as_dict(),
                               "elapsed_s": round(elapsed_s, 1), "quality": quality.__dict__ if quality else None,
                               "disagreement": ({"compared": disagreement.canary.n,
                                                 "rate": round(disagreement.canary.mean, 5)} if disagreement else None)}
    if canary_breaker_open:
        return Verdict(FAIL, ("the canary's circuit breaker is open",), details)
    judged: Judgement = judge(evidence(canary, stable, elapsed_s, quality, disagreement, proven_better), cfg.judge)
    details["judge"] = judged.as_dict()
    status = {Outcome.PASS: PASS, Outcome.ROLLBACK: FAIL, Outcome.CONTINUE: WAIT}[judged.outcome]
    return Verdict(status, judged.reasons, details)
