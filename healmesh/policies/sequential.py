"""Sequential canary judge: anytime-valid tests of "is the canary worse than stable?", safe to read
after every request (continuous monitoring), unlike a fixed-length test read repeatedly.

Each metric is a difference ``delta`` of two independent, asymptotically normal estimates, oriented
so that larger is worse for the canary (error rate, mean log latency, mean log-loss: canary minus
stable; AUC: stable minus canary). With ``V`` the variance of ``delta_hat``, the normal-mixture
likelihood ratio of Johari, Pekelis and Walsh ("Always valid inference", 2017; Optimizely's stats
engine), prior N(theta0, tau^2) on the effect,

    Lambda(theta0) = sqrt(V / (V + tau^2)) * exp((delta_hat - theta0)^2 tau^2 / (2 V (V + tau^2))),

is a martingale under delta = theta0, so by Ville's inequality P(ever Lambda >= 1/a) <= a. The set
{theta0 : Lambda(theta0) < 1/a} is a (1 - a) confidence sequence, delta_hat +- r, with

    r = sqrt(2 V (V + tau^2) / tau^2 * log(sqrt((V + tau^2) / V) / a)).

One-sided with a margin m (non-inferiority):
- ROLLBACK when the (1 - alpha) sequence's lower bound exceeds m: harm beyond the margin is proven.
  If delta <= m, that needs the sequence to miss delta: at most alpha, however often it is read.
- PASS when the (1 - beta) sequence's upper bound is below m: the canary is not worse by more than
  m. If delta >= m, that needs a miss: at most beta.
- else CONTINUE.
The two-sided sequence is used for each one-sided bound (conservative by up to a factor 2). alpha and
beta are shared among the metrics judged (Bonferroni), so a stage's false rollback is <= alpha and its
false pass <= beta, up to the normal approximation (plug-in variances, as Johari et al. do).

Missing data is never a pass: a required metric without evidence, or with fewer than
``min_pass_samples`` canary samples, keeps the stage in CONTINUE; at ``max_canary_calls`` or
``max_stage_s`` an undecided stage is rolled back with the reason. A proven harm wins over everything.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, model_validator

from healmesh.policies.checks import need

# Smallest variance a Bernoulli stream is given: with 0 errors in both arms the plug-in variance is 0
# and the sequence would shrink to a point. (failures + 0.5) / (n + 1) is the usual continuity fix.
_HALF = 0.5


class Outcome(StrEnum):
    PASS = "pass"
    ROLLBACK = "rollback"
    CONTINUE = "continue"


class Metric(StrEnum):
    ERROR_RATE = "error_rate"
    LATENCY = "latency"  # mean of log latency
    QUALITY = "quality"  # mean log-loss, or AUC (labelled or estimated)
    DISAGREEMENT = "disagreement"  # share of decisions unlike the champion's (the shadow stage)


@dataclass(frozen=True)
class Stream:
    """Summary of one variant's per-call values: count, mean, sample variance (ddof=1)."""

    n: int
    mean: float
    var: float

    def __post_init__(self) -> None:
        if self.n < 0 or not math.isfinite(self.mean) or not (self.var >= 0 and math.isfinite(self.var)):
            raise ValueError(f"a stream needs n >= 0, a finite mean and a variance >= 0, but was {self}")

    @classmethod
    def of(cls, values: np.ndarray) -> Stream:
        x = np.asarray(values, dtype=float)
        return cls(len(x), float(x.mean()) if len(x) else 0.0, float(x.var(ddof=1)) if len(x) > 1 else 0.0)

    @classmethod
    def from_sums(cls, n: int, total: float, total_sq: float) -> Stream:
        """From running sums (what a caller accumulates): n, sum x, sum x^2."""
        if n <= 0:
            return cls(0, 0.0, 0.0)
        mean = total / n
        var = max(total_sq - n * mean * mean, 0.0) / (n - 1) if n > 1 else 0.0
        return cls(n, mean, var)

    @classmethod
    def bernoulli(cls, n: int, events: int) -> Stream:
        """Error counts: mean = events / n; variance from the continuity-corrected rate, never 0."""
        if not 0 <= events <= n:
            raise ValueError(f"events must be in 0..n, but were {events} of {n}")
        if n == 0:
            return cls(0, 0.0, 0.0)
        smoothed = (events + _HALF) / (n + 1)
        return cls(n, events / n, smoothed * (1 - smoothed))


@dataclass(frozen=True)
class MeanDiff:
    """Canary vs stable per-call means, larger = worse (errors, log latency, log-loss)."""

    canary: Stream
    stable: Stream

    def delta(self) -> tuple[float, float, int]:
        """(canary - stable, its variance, canary samples); variance inf when an arm has < 2 samples."""
        if self.canary.n < 2 or self.stable.n < 2:
            return 0.0, math.inf, self.canary.n
        return (self.canary.mean - self.stable.mean,
                self.canary.var / self.canary.n + self.stable.var / self.stable.n, self.canary.n)


@dataclass(frozen=True)
class AucDiff:
    """AUCs with their variances (DeLong: ``healmesh.policies.quality.auc_variance``; or CBPE's
    estimate, ``estimated=True``). The difference of independent AUCs is asymptotically normal."""

    canary_auc: float
    canary_var: float
    stable_auc: float
    stable_var: float
    canary_labels: int  # labelled (or estimated-over) canary calls
    estimated: bool = False

    def delta(self) -> tuple[float, float, int]:
        return self.stable_auc - self.canary_auc, self.canary_var + self.stable_var, self.canary_labels


QualityEvidence = MeanDiff | AucDiff


@dataclass(frozen=True)
class Evidence:
    """Everything seen in the stage so far. ``None``: no evidence for that metric yet."""

    canary_calls: int
    elapsed_s: float
    error_rate: MeanDiff | None = None
    latency: MeanDiff | None = None  # streams of log(latency seconds)
    quality: QualityEvidence | None = None
    # the shadow stage: canary = its disagreements with the champion (Bernoulli), stable = none; the
    # metric is required whenever it is given
    disagreement: MeanDiff | None = None
    # the lower bound with which the retrain gate proved the challenger better than the champion on
    # labelled recent traffic (AUC difference); None: not proven better (or not gated)
    proven_better: float | None = None


class JudgeConfig(BaseModel):
    """Frozen and validated. Margins are in the metric's own units (error rate: absolute rate;
    latency: log of the largest tolerated ratio of geometric means; log-loss: nats; AUC: points/100).
    A tau left None is the margin: the mixture is tightest for effects around tau."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    alpha: float = 0.05  # false rollback per stage
    beta: float = 0.05  # false pass per stage
    error_margin: float = 0.01
    latency_margin: float = math.log(1.25)
    auc_margin: float = 0.01
    logloss_margin: float = 0.02
    # a retrained challenger is meant to decide some transactions differently (a concept-drift heal
    # does); proven disagreement on over 10 % of decisions is a different model, not a retrain
    disagreement_margin: float = 0.10
    # 0.05, not the margin: a small tau tunes the mixture to small effects and then 20 % errors in 100
    # calls stay undecided (radius 0.41 at tau 0.01; 0.135 at tau 0.05, so ROLLBACK)
    error_tau: float | None = 0.05
    latency_tau: float | None = None
    # 0.05, not the margin, for the same reason: a canary 25 AUC points better (the concept-drift
    # heal) proves "not worse" after about 220 canary labels at tau 0.05 and 860 at tau 0.01 (2 %
    # positives); equal or 2-points-worse canaries need about 20 % more calls to be decided
    auc_tau: float | None = 0.05
    logloss_tau: float | None = None
    disagreement_tau: float | None = None
    require_quality: bool = True  # labels or estimates are expected; False: judged only if given
    min_pass_samples: int = 200  # canary samples a metric needs before it may pass
    max_canary_calls: int = 200_000
    max_stage_s: float = 3600.0

    @model_validator(mode="after")
    def _check(self) -> JudgeConfig:
        need(0 < self.alpha < 1, "alpha must be in (0, 1)", self.alpha)
        need(0 < self.beta < 1, "beta must be in (0, 1)", self.beta)
        for name in ("error_margin", "latency_margin", "auc_margin", "logloss_margin", "disagreement_margin"):
            need(getattr(self, name) > 0, f"{name} must be > 0", getattr(self, name))
        for name in ("error_tau", "latency_tau", "auc_tau", "logloss_tau", "disagreement_tau"):
            value = getattr(self, name)
            need(value is None or value > 0, f"{name} must be > 0", value)
        need(self.min_pass_samples >= 2, "min_pass_samples must be >= 2", self.min_pass_samples)
        need(self.max_canary_calls >= self.min_pass_samples, "max_canary_calls must be >= min_pass_samples",
             self.max_canary_calls)
        need(self.max_stage_s > 0, "max_stage_s must be > 0", self.max_stage_s)
        return self

    def margin_tau(self, kind: str) -> tuple[float, float]:
        margin = float(getattr(self, f"{kind}_margin"))
        tau = getattr(self, f"{kind}_tau")
        return margin, float(tau) if tau is not None else margin


def cs_radius(v: float, tau: float, a: float) -> float:
    """Half-width of the (1 - a) normal-mixture confidence sequence for a mean with variance v."""
    if not math.isfinite(v):
        return math.inf
    if v <= 0:
        return 0.0
    t2 = tau * tau
    return math.sqrt(2 * v * (v + t2) / t2 * math.log(math.sqrt((v + t2) / v) / a))


def mixture_lr(delta_hat: float, v: float, tau: float, theta0: float = 0.0) -> float:
    """Johari et al.'s mixture likelihood ratio against delta = theta0 (1/it is the always-valid p-value)."""
    if not math.isfinite(v) or v <= 0:
        return 1.0
    t2 = tau * tau
    exponent = (delta_hat - theta0) ** 2 * t2 / (2 * v * (v + t2))
    return math.sqrt(v / (v + t2)) * math.exp(min(exponent, 700.0))


@dataclass(frozen=True)
class MetricJudgement:
    metric: Metric
    outcome: Outcome
    delta: float | None  # larger = canary worse
    lower: float | None  # (1 - alpha_m) sequence lower bound: > margin proves harm
    upper: float | None  # (1 - beta_m) sequence upper bound: < margin proves no harm
    margin: float
    samples: int
    kind: str  # error / latency / logloss / auc / estimated_auc / missing
    reason: str


@dataclass(frozen=True)
class Judgement:
    outcome: Outcome
    reasons: tuple[str, ...]
    metrics: Mapping[Metric, MetricJudgement] = field(default_factory=dict)

    def brief(self) -> str:
        """One line over every judged metric: its difference (larger = canary worse), the sequences'
        bounds and the margin, e.g. ``error rate +0 [-0.0047, +0.0047] < 0.01 (595)``."""
        parts = []
        for j in self.metrics.values():
            if j.delta is None or j.lower is None or j.upper is None:
                parts.append(f"{j.metric.value}: no evidence")
                continue
            parts.append(f"{_SHORT[j.kind]} {j.delta:+.3g} [{j.lower:+.3g}, {j.upper:+.3g}] vs {j.margin:.3g} "
                         f"({j.samples})")
        return "; ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return {"outcome": self.outcome.value, "reasons": list(self.reasons), "brief": self.brief(),
                "metrics": {m.value: {"outcome": j.outcome.value, "delta": j.delta, "lower": j.lower,
                                      "upper": j.upper, "margin": j.margin, "samples": j.samples,
                                      "kind": j.kind} for m, j in self.metrics.items()}}


_SHORT = {"error": "error rate", "latency": "log latency", "logloss": "log-loss", "auc": "AUC drop (live)",
          "estimated_auc": "AUC drop (estimated)", "disagreement": "disagreement"}
_UNITS = {"error": "error rate", "latency": "log latency", "logloss": "log-loss", "auc": "AUC drop",
          "disagreement": "share of decisions unlike the champion's",
          "estimated_auc": "estimated AUC drop (CBPE, no labels)"}


def judge_metric(metric: Metric, ev: MeanDiff | AucDiff | None, cfg: JudgeConfig, alpha_m: float,
                 beta_m: float) -> MetricJudgement:
    """One metric's verdict from its own sequences (``alpha_m``/``beta_m``: its share of the stage's)."""
    if ev is None:
        return MetricJudgement(metric, Outcome.CONTINUE, None, None, None, 0.0, 0, "missing",
                               f"{metric.value}: no evidence yet")
    if isinstance(ev, AucDiff):
        kind = "estimated_auc" if ev.estimated else "auc"
        margin, tau = cfg.margin_tau("auc")
    else:
        kind = {Metric.ERROR_RATE: "error", Metric.LATENCY: "latency", Metric.QUALITY: "logloss",
                Metric.DISAGREEMENT: "disagreement"}[metric]
        margin, tau = cfg.margin_tau(kind)
    d, v, n = ev.delta()
    lower, upper = d - cs_radius(v, tau, alpha_m), d + cs_radius(v, tau, beta_m)
    what = f"{metric.value} ({_UNITS[kind]}): canary - stable = {d:+.4g}"
    bounds = f"sequence [{lower:+.4g}, {upper:+.4g}], margin {margin:.4g}, {n} canary samples"
    if lower > margin:
        return MetricJudgement(metric, Outcome.ROLLBACK, d, lower, upper, margin, n, kind,
                               f"{what}: worse by more than the margin is proven ({bounds})")
    if upper < margin and n >= cfg.min_pass_samples:
        return MetricJudgement(metric, Outcome.PASS, d, lower, upper, margin, n, kind,
                               f"{what}: not worse by more than the margin ({bounds})")
    short = f"; needs {cfg.min_pass_samples} to pass" if upper < margin else ""
    return MetricJudgement(metric, Outcome.CONTINUE, d, lower, upper, margin, n, kind,
                           f"{what}: undecided ({bounds}{short})")


# quality from labels: an estimate (CBPE) assumes P(y|x) did not change, so it cannot vouch for a
# challenger that decides differently because it did
_LABELLED = frozenset({"auc", "logloss"})


def _disagreement_explained(verdicts: dict[Metric, MetricJudgement],
                            proven_better: float | None) -> dict[Metric, MetricJudgement]:
    """Proven disagreement is a veto only where labels cannot speak. A challenger that heals a
    broken champion must decide differently (the weather example's retrain after its data break
    disagrees on 48-52 % of decisions, gated AUC 0.95 against 0.33): when labels prove it better
    (the retrain gate's interval above zero) or not worse (the stage's own labelled quality), the
    disagreement passes; while the stage's labelled quality is undecided, the stage waits for it."""
    d, q = verdicts.get(Metric.DISAGREEMENT), verdicts.get(Metric.QUALITY)
    if d is None or d.outcome is not Outcome.ROLLBACK or (q is not None and q.outcome is Outcome.ROLLBACK):
        return verdicts
    if proven_better is not None and proven_better > 0:
        outcome, why = Outcome.PASS, (f"expected: the retrain gate proved the challenger better on labelled "
                                      f"recent traffic (AUC difference above {proven_better:+.4f})")
    elif q is None or q.kind not in _LABELLED:
        return verdicts
    elif q.outcome is Outcome.PASS:
        outcome, why = Outcome.PASS, "expected: labelled quality proves the challenger not worse"
    else:
        outcome, why = Outcome.CONTINUE, "waiting for labelled quality to judge it"
    head, _, bounds = d.reason.partition(": worse by more than the margin is proven ")
    return {**verdicts, Metric.DISAGREEMENT: replace(d, outcome=outcome,
                                                      reason=f"{head}: beyond the margin {bounds}, {why}")}


def judge(evidence: Evidence, cfg: JudgeConfig) -> Judgement:
    """The stage's answer now: ROLLBACK if any metric proves harm; PASS if every required metric
    proves no harm; ROLLBACK at the stage's limit when undecided; else CONTINUE."""
    streams: dict[Metric, MeanDiff | AucDiff | None] = {
        Metric.ERROR_RATE: evidence.error_rate, Metric.LATENCY: evidence.latency, Metric.QUALITY: evidence.quality,
        Metric.DISAGREEMENT: evidence.disagreement}
    required = ({Metric.ERROR_RATE, Metric.LATENCY} | ({Metric.QUALITY} if cfg.require_quality else set())
                | ({Metric.DISAGREEMENT} if evidence.disagreement is not None else set()))
    judged = [m for m in Metric if m in required or streams[m] is not None]
    # Bonferroni over the metrics that can act: each sequence is valid on its own, a union bound joins them
    k = len(judged)
    verdicts = {m: judge_metric(m, streams[m], cfg, cfg.alpha / k, cfg.beta / k) for m in judged}
    verdicts = _disagreement_explained(verdicts, evidence.proven_better)
    harmed = [j.reason for j in verdicts.values() if j.outcome is Outcome.ROLLBACK]
    if harmed:
        return Judgement(Outcome.ROLLBACK, tuple(harmed), verdicts)
    undecided = [j for m, j in verdicts.items() if m in required and j.outcome is not Outcome.PASS]
    if not undecided:
        return Judgement(Outcome.PASS, tuple(j.reason for j in verdicts.values()), verdicts)
    limits = []
    if evidence.canary_calls >= cfg.max_canary_calls:
        limits.append(f"{evidence.canary_calls} canary calls reached the limit of {cfg.max_canary_calls}")
    if evidence.elapsed_s >= cfg.max_stage_s:
        limits.append(f"{evidence.elapsed_s:.0f}s reached the stage limit of {cfg.max_stage_s:.0f}s")
    if limits:
        why = "too little evidence: " + " and ".join(limits) + " before every required metric was decided"
        return Judgement(Outcome.ROLLBACK, (why, *(j.reason for j in undecided)), verdicts)
    return Judgement(Outcome.CONTINUE, tuple(j.reason for j in undecided), verdicts)
