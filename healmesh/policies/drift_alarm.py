"""The drift decision: which drift retrains, which is only reported. Pure (numpy; pandas for the
statistics and row hashes). Its settings are ``policies.drift.DriftThresholds`` (``Settings.drift``).

``decide_alarm`` reads the per-feature statistics ``healmesh.policies.drift.feature_drift``
computes and decides, in this order:

1. INSUFFICIENT_DATA: a window under ``min_window`` rows is no decision.
2. ANOMALOUS_TRAFFIC: a window dominated by a few distinct rows (a load test replaying one body,
   a bot) is reported and never retrains: 100,000 copies of one transaction flagged 15 of 16
   features "drifted" (PSI 8.3) under the old rule and started a retrain (issue 11).
3. A feature drifts when it is both *significant* and *material*:
   - significant: Benjamini-Hochberg false-discovery-rate control at ``fdr_q`` over the features'
     p-values (KS for numeric, chi-square for categorical). The p-values carry the sample size,
     BH the number of features: 16 tests at p < 0.01 each would raise a false alarm on ~15 %
     of undrifted windows; BH bounds the expected share of false discoveries instead;
   - material: an effect-size floor (PSI >= ``min_psi``, or KS >= ``min_ks`` / JS >= ``min_js``),
     because with large windows a p-value finds shifts too small to matter.
   No drifted feature: NO_DRIFT.
4. DRIFT_REPORTED (no retrain) when the drifted features carry under ``min_importance`` of the
   served model's (normalised) importance, or when an estimated performance impact (CBPE's
   estimated AUC against the reference AUC) shows no material drop. Otherwise DRIFT (retrains).

``headline`` is one sentence for the top of the HTML report, so the page and the decision agree.

``decide`` is the drift check's whole decision: the statistics, the alarm, and the champion's live
quality (labelled concept drift retrains whatever the features say, except on anomalous traffic,
whose labels are no evidence either). Both speak ``DriftDecision``, the value the drift summary
publishes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from healmesh.policies.drift import DriftThresholds, FeatureDrift, QualityCheck, feature_drift
from healmesh.policies.drift_decision import DriftDecision
from healmesh.policies.estimation import (
    Calibrator,
    CheckOutcome,
    EstimateCheck,
    EstimationConfig,
    PerformanceEstimate,
    compare,
    estimate,
)

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class TrafficProfile:
    rows: int
    distinct: int
    top_share: float  # share of the window taken by its most common row

    @property
    def distinct_share(self) -> float:
        return self.distinct / self.rows if self.rows else 1.0


def traffic_profile(row_hashes: np.ndarray) -> TrafficProfile:
    """Rows, distinct rows and the most common row's share, from one hash per row (the caller
    hashes rows, e.g. ``pd.util.hash_pandas_object(frame, index=False)``)."""
    hashes = np.asarray(row_hashes).ravel()
    if hashes.size == 0:
        return TrafficProfile(0, 0, 0.0)
    _, counts = np.unique(hashes, return_counts=True)
    return TrafficProfile(int(hashes.size), int(counts.size), float(counts.max() / hashes.size))


@dataclass(frozen=True)
class EstimatedImpact:
    """Estimated AUC of the window (CBPE, no labels needed) against the reference AUC."""

    estimated_auc: float
    reference_auc: float
    standard_error: float

    def __post_init__(self) -> None:
        for name in ("estimated_auc", "reference_auc"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], but was {v}")
        if not (math.isfinite(self.standard_error) and self.standard_error >= 0):
            raise ValueError(f"standard_error must be finite and >= 0, but was {self.standard_error}")

    @property
    def drop(self) -> float:
        return self.reference_auc - self.estimated_auc

    def hurts(self, cfg: DriftThresholds) -> bool:
        """The drop is material (>= max_auc_drop) and beyond the estimate's noise (>= z SE)."""
        return self.drop >= cfg.max_auc_drop and self.drop >= cfg.impact_z * self.standard_error


@dataclass(frozen=True)
class RankedFeature:
    feature: str
    kind: str
    psi: float
    effect: float  # KS statistic (numeric) or JS distance (categorical); 0 when absent
    p_value: float
    q_value: float  # Benjamini-Hochberg adjusted p-value
    importance: float | None  # normalised weight, None when no importance was given
    score: float  # PSI x importance (PSI alone without importance)
    significant: bool
    material: bool

    @property
    def drifted(self) -> bool:
        return self.significant and self.material


@dataclass(frozen=True)
class DriftAlarm:
    outcome: DriftDecision  # never NONE (that is a summary's before any check)
    headline: str
    reasons: tuple[str, ...]
    n_rows: int
    features: tuple[RankedFeature, ...] = ()  # drifted first, then by score, highest first
    traffic: TrafficProfile | None = None
    drifted_importance: float | None = None  # summed normalised importance of the drifted features
    impact: EstimatedImpact | None = None

    @property
    def retrain(self) -> bool:
        return self.outcome is DriftDecision.DRIFT

    @property
    def drifted(self) -> list[str]:
        return [f.feature for f in self.features if f.drifted]

    def to_dict(self) -> dict[str, Any]:
        return {"outcome": str(self.outcome), "headline": self.headline, "reasons": list(self.reasons),
                "n_rows": self.n_rows, "retrain": self.retrain, "drifted": self.drifted,
                "features": [{**asdict(f), "drifted": f.drifted} for f in self.features],
                "traffic": asdict(self.traffic) if self.traffic else None,
                "drifted_importance": self.drifted_importance,
                "impact": {**asdict(self.impact), "drop": self.impact.drop} if self.impact else None}


def bh_adjust(p_values: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values: reject H_i at level q iff adjusted_i <= q (the step-up
    procedure: the largest k with p_(k) <= k q / m, and every smaller p)."""
    p = np.asarray(p_values, dtype=float)
    m = p.size
    if m == 0:
        return p
    order = np.argsort(p, kind="mergesort")
    scaled = p[order] * m / np.arange(1, m + 1)
    adjusted_sorted = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(adjusted_sorted, 1.0)
    return out


def normalise_importance(importance: Mapping[str, float], features: list[str]) -> dict[str, float]:
    """Weights over ``features`` summing to 1 (features the mapping lacks weigh 0)."""
    for name, w in importance.items():
        if not (math.isfinite(w) and w >= 0):
            raise ValueError(f"importance of {name!r} must be finite and >= 0, but was {w}")
    total = sum(float(importance.get(f, 0.0)) for f in features)
    if total <= 0:
        raise ValueError("importance gives no weight to any feature of the window")
    return {f: float(importance.get(f, 0.0)) / total for f in features}


def _p_value(f: FeatureDrift) -> float:
    p = f.ks_p_value if f.kind == "numeric" else f.chi2_p_value
    return 1.0 if p is None or not math.isfinite(p) else float(p)  # not testable: never significant


def _effect(f: FeatureDrift) -> float:
    e = f.ks if f.kind == "numeric" else f.js
    return 0.0 if e is None else float(e)


def _names(features: list[RankedFeature], n: int = 3) -> str:
    shown = ", ".join(f.feature for f in features[:n])
    return shown + (f" and {len(features) - n} more" if len(features) > n else "")


def decide_alarm(features: Mapping[str, FeatureDrift], n_rows: int, row_hashes: np.ndarray | None = None,
                 importance: Mapping[str, float] | None = None, estimated_impact: EstimatedImpact | None = None,
                 cfg: DriftThresholds | None = None) -> DriftAlarm:
    cfg = cfg or DriftThresholds()
    if n_rows < cfg.min_window:
        why = f"window of {n_rows:,} rows is under the minimum of {cfg.min_window:,}"
        return DriftAlarm(DriftDecision.INSUFFICIENT_DATA, f"No decision: {why}.", (why,), n_rows)

    traffic = traffic_profile(row_hashes) if row_hashes is not None else None
    if traffic is not None and traffic.rows and (traffic.top_share > cfg.max_top_row_share
                                                 or traffic.distinct_share < cfg.min_distinct_share):
        why = (f"the most common row is {traffic.top_share:.0%} of {traffic.rows:,} rows, and "
               f"{traffic.distinct:,} of them are distinct (limits: top share {cfg.max_top_row_share:.0%}, "
               f"distinct share {cfg.min_distinct_share:.0%})")
        return DriftAlarm(DriftDecision.ANOMALOUS_TRAFFIC,
                          f"Anomalous traffic, no retrain: {why}; feature drift is not judged on it.",
                          (why,), n_rows, traffic=traffic)

    names = list(features)
    fds = [features[n] for n in names]
    q_values = bh_adjust(np.array([_p_value(f) for f in fds]))
    weights = normalise_importance(importance, names) if importance is not None else None
    ranked: list[RankedFeature] = []
    for name, f, qv in zip(names, fds, q_values, strict=True):
        effect = _effect(f)
        floor = cfg.min_ks if f.kind == "numeric" else cfg.min_js
        w = weights[name] if weights is not None else None
        # PSI may be inf (constant reference); an unimportant feature scores 0 whatever its PSI
        score = f.psi if w is None else (f.psi * w if w > 0 else 0.0)
        ranked.append(RankedFeature(name, f.kind, f.psi, effect, _p_value(f), float(qv), w, score,
                                    significant=bool(qv <= cfg.fdr_q),
                                    material=f.psi >= cfg.min_psi or effect >= floor))
    ranked.sort(key=lambda r: (not r.drifted, -r.score, -r.psi))
    drifted = [r for r in ranked if r.drifted]
    tested = f"BH q={cfg.fdr_q:g}, floor PSI {cfg.min_psi:g} / KS {cfg.min_ks:g} / JS {cfg.min_js:g}"
    if not drifted:
        suppressed = [r for r in ranked if r.significant and not r.material]
        why = f"none of {len(ranked)} features shifted both significantly and materially ({tested})"
        reasons = [why] + ([f"significant but under the effect floor: {_names(suppressed)}"] if suppressed else [])
        return DriftAlarm(DriftDecision.NO_DRIFT, f"No drift: {why}.", tuple(reasons), n_rows, tuple(ranked),
                          traffic, 0.0 if weights is not None else None, estimated_impact)

    what = f"{len(drifted)} of {len(ranked)} features drifted ({_names(drifted)}; {tested})"
    reasons = [what] + [f"{r.feature}: PSI {r.psi:.3f}, {'KS' if r.kind == 'numeric' else 'JS'} {r.effect:.3f}, "
                        f"BH-adjusted p {r.q_value:.2g}" + (f", importance {r.importance:.1%}"
                                                           if r.importance is not None else "")
                        for r in drifted]
    carried = sum(r.importance or 0.0 for r in drifted) if weights is not None else None
    vetoes: list[str] = []
    if carried is not None:
        line = f"drifted features carry {carried:.1%} of the model's importance (floor {cfg.min_importance:.0%})"
        reasons.append(line)
        if carried < cfg.min_importance:
            vetoes.append(line)
    if estimated_impact is not None:
        e = estimated_impact
        line = (f"estimated AUC {e.estimated_auc:.3f} against reference {e.reference_auc:.3f} (drop {e.drop:+.3f}, "
                f"SE {e.standard_error:.3f}; retrains from a drop of {cfg.max_auc_drop:g} and {cfg.impact_z:g} SE)")
        reasons.append(line)
        if not e.hurts(cfg):
            vetoes.append(line)
    outcome = DriftDecision.DRIFT_REPORTED if vetoes else DriftDecision.DRIFT
    if vetoes:
        headline = f"Drift reported, no retrain: {what}, but {'; and '.join(vetoes)}."
    else:
        extra = reasons[len(drifted) + 1:]  # the importance and impact lines, when given
        headline = f"Drift, retrain: {what}" + "".join(f"; {x}" for x in extra) + "."
    return DriftAlarm(outcome, headline, tuple(reasons), n_rows, tuple(ranked), traffic, carried, estimated_impact)


@dataclass(frozen=True)
class EstimateReading:
    """The champion's performance estimated over the window (CBPE) and, where labels came back,
    checked against them. ``impact`` is what the decision may use: None without an estimate, and
    None when the labels contradict it (concept drift: calibration no longer holds)."""

    estimate: PerformanceEstimate | None
    check: EstimateCheck | None
    impact: EstimatedImpact | None
    note: str

    def to_dict(self) -> dict[str, Any]:
        return {"estimate": asdict(self.estimate) if self.estimate else None,
                "check": asdict(self.check) if self.check else None,
                "impact": asdict(self.impact) if self.impact else None, "note": self.note}


def read_estimate(calibrator: Calibrator | None, served: np.ndarray, labels: np.ndarray,
                  labelled_served: np.ndarray, reference_auc: float | None, threshold: float,
                  cfg: DriftThresholds, est_cfg: EstimationConfig | None = None) -> EstimateReading:
    """``served``: the champion's probabilities over the window; ``labels``/``labelled_served``: those
    of its answers whose label came back. The estimate needs the version's calibrator, the reference
    (holdout) AUC and ``min_window`` answers."""
    est_cfg = est_cfg or EstimationConfig()
    if calibrator is None:
        return EstimateReading(None, None, None, "no performance estimate: the champion has no calibrator "
                                                 "(trained before healmesh stored one)")
    if reference_auc is None or len(served) < cfg.min_window:
        return EstimateReading(None, None, None, f"no performance estimate: {len(served):,} answers of the "
                                                 f"champion (needs {cfg.min_window:,}) or no holdout AUC")
    est = estimate(calibrator.apply(served), threshold, predictions=np.asarray(served) >= threshold)
    if not (math.isfinite(est.estimated_auc) and math.isfinite(est.auc_se)):
        return EstimateReading(None, None, None, "no performance estimate: the calibrated probabilities hold "
                                                "one class only")
    impact = EstimatedImpact(est.estimated_auc, reference_auc, est.auc_se)
    line = (f"estimated AUC (CBPE, before labels) {est.estimated_auc:.3f} +- {est.auc_se:.3f} over "
            f"{est.n:,} answers, precision {est.precision:.2f} and recall {est.recall:.2f} at the threshold; "
            f"holdout AUC {reference_auc:.3f}")
    if len(labels) == 0:
        return EstimateReading(est, None, impact, line)
    check = compare(est, labels, calibrator.apply(labelled_served), est_cfg)
    if check.outcome is CheckOutcome.GAP:
        assert check.realised_auc is not None and check.allowed is not None  # a GAP has both
        return EstimateReading(est, check, None, f"{line}; but the {check.labels:,} labels that came back give AUC "
                                                 f"{check.realised_auc:.3f} (gap {check.gap:+.3f}, allowed "
                                                 f"{check.allowed:.3f}): concept drift, the estimate no longer "
                                                 "holds and is not used")
    if check.outcome is CheckOutcome.CONSISTENT:
        return EstimateReading(est, check, impact, f"{line}; the labels that came back agree (AUC "
                                                   f"{check.realised_auc:.3f}, {check.labels:,} labels)")
    return EstimateReading(est, check, impact, f"{line}; too few labels yet to check it")


def row_hashes(frame: pd.DataFrame) -> np.ndarray:
    """One hash per row over the model's features (what ``traffic_profile`` counts)."""
    import pandas as pd

    from healmesh import schema

    hashes: np.ndarray = pd.util.hash_pandas_object(frame[list(schema.active().feature_names)], index=False).to_numpy()
    return hashes


@dataclass(frozen=True)
class DriftResult:
    decision: DriftDecision
    window_size: int
    reference_size: int
    headline: str
    alarm: DriftAlarm
    features: dict[str, FeatureDrift] = field(default_factory=dict)
    reasons: tuple[str, ...] = ()
    quality: QualityCheck | None = None
    estimate: EstimateReading | None = None

    @property
    def drifted_features(self) -> list[str]:
        """Drifted features, ranked by drift x the model's importance (by PSI without importance)."""
        return self.alarm.drifted

    @property
    def share_drifted(self) -> float:
        return len(self.alarm.drifted) / len(self.features) if self.features else 0.0

    def top(self, n: int = 5) -> list[tuple[str, float]]:
        """The n highest-PSI features with their PSI."""
        return [(f.feature, round(f.psi, 4)) for f in sorted(self.features.values(), key=lambda f: -f.psi)[:n]]

    def to_dict(self) -> dict[str, Any]:
        return {"decision": self.decision, "headline": self.headline, "window_size": self.window_size,
                "reference_size": self.reference_size, "share_drifted": self.share_drifted,
                "drifted_features": self.drifted_features, "reasons": list(self.reasons),
                "features": {k: asdict(v) for k, v in self.features.items()},
                "quality": asdict(self.quality) if self.quality else None, "alarm": self.alarm.to_dict(),
                "estimate": self.estimate.to_dict() if self.estimate else None}


def decide(reference: pd.DataFrame, current: pd.DataFrame, t: DriftThresholds, quality: QualityCheck | None = None,
           importance: Mapping[str, float] | None = None,
           estimated: EstimateReading | None = None) -> DriftResult:
    """The drift check's decision on ``current`` against ``reference`` (DRIFT is the one that retrains)."""
    n = len(current)
    features = feature_drift(reference, current) if n >= t.min_window else {}
    impact = estimated.impact if estimated else None
    alarm = decide_alarm(features, n, row_hashes(current) if n else None, importance, impact, t)
    decision, headline, reasons = alarm.outcome, alarm.headline, list(alarm.reasons)
    if estimated is not None and not (impact is not None and alarm.drifted):
        reasons.append(estimated.note)  # a drift judged with the impact has the alarm's own line on it
    judged = alarm.outcome not in (DriftDecision.INSUFFICIENT_DATA, DriftDecision.ANOMALOUS_TRAFFIC)
    if judged and quality is not None and quality.dropped:
        line = (f"live AUC {quality.live_auc:.3f} is more than {t.auc_drop} under the holdout AUC "
                f"{quality.reference_auc:.3f} ({quality.labelled:,} labels, {quality.positives:,} positive)")
        reasons.append(line)
        decision = DriftDecision.DRIFT
        headline = f"Drift, retrain: the champion's {line}. Features: {alarm.headline}"
    return DriftResult(decision, n, len(reference), headline, alarm, features, tuple(reasons), quality, estimated)


def scores_for_metrics(result: DriftResult) -> Mapping[str, Mapping[str, float]]:
    """Per feature: psi, and ks or js (what the gateway exports as healmesh_drift_score)."""
    return {name: {k: v for k, v in f.scores().items() if k in ("psi", "ks", "js")}
            for name, f in result.features.items()}
