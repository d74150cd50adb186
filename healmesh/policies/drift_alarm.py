"""Drift alarms that mean something: which drift retrains, which is only reported. Pure (numpy only).

It reads the per-feature statistics ``healmesh.policies.drift.feature_drift`` already computes
and decides, in this order:

1. INSUFFICIENT_DATA: a window under ``min_rows`` rows is no decision.
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
   estimated AUC against the reference AUC) shows no material drop. Otherwise DRIFT_RETRAIN.

``headline`` is one sentence for the top of the HTML report, so the page and the decision agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, model_validator

from healmesh.policies.drift import FeatureDrift


class AlarmOutcome(StrEnum):
    NO_DRIFT = "no_drift"
    DRIFT_RETRAIN = "drift_retrain"
    DRIFT_REPORTED = "drift_reported"  # drifted, but unimportant or harmless: reported, no retrain
    ANOMALOUS_TRAFFIC = "anomalous_traffic"  # a few distinct rows dominate: reported, never a retrain
    INSUFFICIENT_DATA = "insufficient_data"


class AlarmConfig(BaseModel):
    """Frozen and validated."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fdr_q: float = 0.05
    # Effect floors. Undrifted 2,000-row windows against a 5,000-row reference: PSI ~0.005 and KS
    # under 0.04 (95 %), so 0.1 is far above noise and is the usual "moderate shift" PSI band.
    min_psi: float = 0.1
    min_ks: float = 0.1
    min_js: float = 0.1
    min_rows: int = 500
    # Real card traffic has (nearly) no duplicate rows: amounts carry cents and times vary.
    max_top_row_share: float = 0.05
    min_distinct_share: float = 0.5
    # Drifted features carrying less than this share of the model's importance do not retrain.
    min_importance: float = 0.05
    # An estimated AUC drop retrains only when it is at least this large and at least z
    # standard errors of the estimate.
    max_auc_drop: float = 0.01
    impact_z: float = 1.645

    @model_validator(mode="after")
    def _check(self) -> AlarmConfig:
        def need(ok: bool, what: str, value: object) -> None:
            if not ok:
                raise ValueError(f"{what}, but was {value!r}")

        need(0.0 < self.fdr_q < 1.0, "fdr_q must be in (0, 1)", self.fdr_q)
        for name in ("min_psi", "min_ks", "min_js", "max_auc_drop"):
            need(getattr(self, name) > 0, f"{name} must be > 0", getattr(self, name))
        need(self.min_ks <= 1.0 and self.min_js <= 1.0, "min_ks and min_js must be <= 1", (self.min_ks, self.min_js))
        need(self.min_rows >= 10, "min_rows must be >= 10", self.min_rows)
        need(0.0 < self.max_top_row_share <= 1.0, "max_top_row_share must be in (0, 1]", self.max_top_row_share)
        need(0.0 <= self.min_distinct_share < 1.0, "min_distinct_share must be in [0, 1)", self.min_distinct_share)
        need(0.0 <= self.min_importance < 1.0, "min_importance must be in [0, 1)", self.min_importance)
        need(self.impact_z >= 0, "impact_z must be >= 0", self.impact_z)
        return self


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

    def hurts(self, cfg: AlarmConfig) -> bool:
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
    outcome: AlarmOutcome
    headline: str
    reasons: tuple[str, ...]
    n_rows: int
    features: tuple[RankedFeature, ...] = ()  # drifted first, then by score, highest first
    traffic: TrafficProfile | None = None
    drifted_importance: float | None = None  # summed normalised importance of the drifted features
    impact: EstimatedImpact | None = None

    @property
    def retrain(self) -> bool:
        return self.outcome is AlarmOutcome.DRIFT_RETRAIN

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
                 cfg: AlarmConfig | None = None) -> DriftAlarm:
    cfg = cfg or AlarmConfig()
    if n_rows < cfg.min_rows:
        why = f"window of {n_rows:,} rows is under the minimum of {cfg.min_rows:,}"
        return DriftAlarm(AlarmOutcome.INSUFFICIENT_DATA, f"No decision: {why}.", (why,), n_rows)

    traffic = traffic_profile(row_hashes) if row_hashes is not None else None
    if traffic is not None and traffic.rows and (traffic.top_share > cfg.max_top_row_share
                                                 or traffic.distinct_share < cfg.min_distinct_share):
        why = (f"the most common row is {traffic.top_share:.0%} of {traffic.rows:,} rows, and "
               f"{traffic.distinct:,} of them are distinct (limits: top share {cfg.max_top_row_share:.0%}, "
               f"distinct share {cfg.min_distinct_share:.0%})")
        return DriftAlarm(AlarmOutcome.ANOMALOUS_TRAFFIC,
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
        return DriftAlarm(AlarmOutcome.NO_DRIFT, f"No drift: {why}.", tuple(reasons), n_rows, tuple(ranked),
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
    outcome = AlarmOutcome.DRIFT_REPORTED if vetoes else AlarmOutcome.DRIFT_RETRAIN
    if vetoes:
        headline = f"Drift reported, no retrain: {what}, but {'; and '.join(vetoes)}."
    else:
        extra = reasons[len(drifted) + 1:]  # the importance and impact lines, when given
        headline = f"Drift, retrain: {what}" + "".join(f"; {x}" for x in extra) + "."
    return DriftAlarm(outcome, headline, tuple(reasons), n_rows, tuple(ranked), traffic, carried, estimated_impact)
