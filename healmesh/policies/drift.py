"""Drift statistics and the drift decision. Pure functions of two tables (no I/O).

Per feature, reference vs current window:
- numeric: two-sample Kolmogorov-Smirnov statistic and p-value;
- every feature: population stability index (PSI) over reference deciles (numeric) or
  categories, with a small floor so empty bins do not explode;
- categorical: chi-square p-value and Jensen-Shannon distance.

A feature drifts when its PSI is at least ``psi`` or (numeric) its KS statistic is at least
``ks_stat`` with a p-value under ``p_value``, or (categorical) its JS distance is at least
``js``. The window drifts when any feature's PSI reaches ``psi_alert`` or the share of
drifted features reaches ``share``. A window smaller than ``min_window`` is no decision.
Live quality (labels joined to predictions) adds a second kind of drift: the champion's
live AUC falling ``auc_drop`` below its holdout AUC.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, model_validator

from healmesh.policies.drift_decision import DriftDecision
from healmesh.policies.quality import live_auc

if TYPE_CHECKING:  # pandas, scipy (and schema, which needs pandas) load only where statistics run: Settings imports
    # DriftThresholds, and the DAG files and the command line import Settings
    import pandas as pd

EPS = 1e-4


class DriftThresholds(BaseModel):
    """Frozen and validated; it is also ``Settings.drift`` (env ``HEALMESH_DRIFT__<FIELD>``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    psi: float = 0.2
    psi_alert: float = 0.25
    ks_stat: float = 0.1
    p_value: float = 0.01
    js: float = 0.1
    share: float = 0.3
    min_window: int = 500
    auc_drop: float = 0.05
    min_quality_labels: int = 300
    min_quality_positives: int = 10

    @model_validator(mode="after")
    def _check(self) -> DriftThresholds:
        for name in ("psi", "psi_alert", "ks_stat", "js", "auc_drop"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, but was {getattr(self, name)}")
        if not 0 < self.p_value < 1:
            raise ValueError(f"p_value must be in (0, 1), but was {self.p_value}")
        if not 0 < self.share <= 1:
            raise ValueError(f"share must be in (0, 1], but was {self.share}")
        if self.min_window < 10:
            raise ValueError(f"min_window must be >= 10, but was {self.min_window}")
        if self.min_quality_labels < 10:
            raise ValueError(f"min_quality_labels must be >= 10, but was {self.min_quality_labels}")
        if self.min_quality_positives < 1:
            raise ValueError(f"min_quality_positives must be >= 1, but was {self.min_quality_positives}")
        return self


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    kind: str
    psi: float
    ks: float | None = None
    ks_p_value: float | None = None
    chi2_p_value: float | None = None
    js: float | None = None
    drifted: bool = False

    def scores(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items() if isinstance(v, int | float) and not isinstance(v, bool)}


@dataclass(frozen=True)
class QualityCheck:
    labelled: int
    positives: int
    live_auc: float | None
    reference_auc: float | None
    dropped: bool


@dataclass(frozen=True)
class DriftResult:
    decision: DriftDecision
    window_size: int
    reference_size: int
    share_drifted: float
    features: dict[str, FeatureDrift] = field(default_factory=dict)
    reasons: tuple[str, ...] = ()
    quality: QualityCheck | None = None

    @property
    def drifted_features(self) -> list[str]:
        """Drifted features, the most drifted first (by PSI)."""
        return [f.feature for f in sorted(self.features.values(), key=lambda f: -f.psi) if f.drifted]

    def top(self, n: int = 5) -> list[tuple[str, float]]:
        return [(f.feature, round(f.psi, 4)) for f in sorted(self.features.values(), key=lambda f: -f.psi)[:n]]

    def to_dict(self) -> dict[str, Any]:
        return {"decision": self.decision, "window_size": self.window_size, "reference_size": self.reference_size,
                "share_drifted": self.share_drifted, "drifted_features": self.drifted_features,
                "reasons": list(self.reasons), "features": {k: asdict(v) for k, v in self.features.items()},
                "quality": asdict(self.quality) if self.quality else None}


def psi_numeric(ref: np.ndarray, cur: np.ndarray, bins: int = 10) -> float:
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)))
    if len(edges) < 2:  # a constant reference: any change is all the drift there is
        return 0.0 if np.all(cur == edges[0]) else float("inf")
    inner = edges[1:-1]
    ref_counts = np.bincount(np.searchsorted(inner, ref, side="right"), minlength=len(inner) + 1)
    cur_counts = np.bincount(np.searchsorted(inner, cur, side="right"), minlength=len(inner) + 1)
    return _psi(ref_counts, cur_counts)


def category_counts(values: pd.Series, categories: tuple[str, ...]) -> np.ndarray:
    counts: np.ndarray = values.value_counts().reindex(categories, fill_value=0).to_numpy()
    return counts


def _psi(ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    p = np.maximum(ref_counts / max(ref_counts.sum(), 1), EPS)
    q = np.maximum(cur_counts / max(cur_counts.sum(), 1), EPS)
    return float(np.sum((q - p) * np.log(q / p)))


def jensen_shannon(ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    from scipy.spatial.distance import jensenshannon

    p = ref_counts / max(ref_counts.sum(), 1)
    q = cur_counts / max(cur_counts.sum(), 1)
    return float(jensenshannon(p, q, base=2))


def feature_drift(reference: pd.DataFrame, current: pd.DataFrame, t: DriftThresholds) -> dict[str, FeatureDrift]:
    from scipy import stats

    from healmesh import schema

    out: dict[str, FeatureDrift] = {}
    for f in schema.FEATURES:
        ref, cur = reference[f.name], current[f.name]
        if isinstance(f, schema.CategoricalFeature):
            rc, cc = category_counts(ref, f.categories), category_counts(cur, f.categories)
            keep = (rc + cc) > 0
            chi2_p = float(stats.chi2_contingency(np.array([rc[keep], cc[keep]]))[1]) if keep.sum() > 1 else 1.0
            psi = _psi(rc, cc)
            js = jensen_shannon(rc, cc)
            drifted = psi >= t.psi or js >= t.js
            out[f.name] = FeatureDrift(f.name, "categorical", psi, chi2_p_value=chi2_p, js=js, drifted=drifted)
        else:
            r, c = ref.to_numpy(dtype=float), cur.to_numpy(dtype=float)
            ks = stats.ks_2samp(r, c)
            psi = psi_numeric(r, c)
            drifted = psi >= t.psi or (ks.statistic >= t.ks_stat and ks.pvalue < t.p_value)
            out[f.name] = FeatureDrift(f.name, "numeric", psi, ks=float(ks.statistic), ks_p_value=float(ks.pvalue),
                                       drifted=drifted)
    return out


def quality_check(labels: np.ndarray, probabilities: np.ndarray, reference_auc: float | None,
                  t: DriftThresholds) -> QualityCheck:
    auc = live_auc(labels, probabilities, t.min_quality_labels, t.min_quality_positives)
    dropped = auc is not None and reference_auc is not None and auc < reference_auc - t.auc_drop
    return QualityCheck(len(labels), int(np.sum(labels)), auc, reference_auc, dropped)


def decide(reference: pd.DataFrame, current: pd.DataFrame, t: DriftThresholds,
           quality: QualityCheck | None = None) -> DriftResult:
    n = len(current)
    if n < t.min_window:
        return DriftResult(DriftDecision.INSUFFICIENT_DATA, n, len(reference), 0.0,
                           reasons=(f"window of {n} records is under the minimum of {t.min_window}",),
                           quality=quality)
    features = feature_drift(reference, current, t)
    drifted = [f for f in features.values() if f.drifted]
    share = len(drifted) / len(features)
    reasons = [f"{f.feature}: PSI {f.psi:.3f}" for f in drifted if f.psi >= t.psi_alert]
    if share >= t.share:
        reasons.append(f"{len(drifted)} of {len(features)} features drifted (share {share:.2f} >= {t.share})")
    if quality is not None and quality.dropped:
        reasons.append(f"live AUC {quality.live_auc:.3f} is more than {t.auc_drop} under the holdout AUC "
                       f"{quality.reference_auc:.3f}")
    decision = DriftDecision.DRIFT if reasons else DriftDecision.NO_DRIFT
    return DriftResult(decision, n, len(reference), share, features, tuple(reasons), quality)


def scores_for_metrics(result: DriftResult) -> Mapping[str, Mapping[str, float]]:
    """Per feature: psi, and ks or js (what the gateway exports as healmesh_drift_score)."""
    return {name: {k: v for k, v in f.scores().items() if k in ("psi", "ks", "js")}
            for name, f in result.features.items()}
