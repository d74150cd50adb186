"""Drift statistics and the drift check's settings. Pure functions of two tables (no I/O); the
decision that reads them is ``healmesh.policies.drift_alarm``.

Per feature, reference vs current window:
- numeric: two-sample Kolmogorov-Smirnov statistic and p-value;
- every feature: population stability index (PSI) over reference deciles (numeric) or
  categories, with a small floor so empty bins do not explode;
- categorical: chi-square p-value and Jensen-Shannon distance.

Live quality (labels joined to predictions) is the second kind of drift: the champion's live
AUC falling ``auc_drop`` below its holdout AUC (concept drift moves P(y|x), which feature
statistics barely see).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel, ConfigDict, model_validator

from healmesh.policies.checks import need
from healmesh.policies.quality import live_auc

if TYPE_CHECKING:  # pandas, scipy (and schema, which needs pandas) load only where statistics run: Settings imports
    # DriftThresholds, and the DAG files and the command line import Settings
    import pandas as pd

EPS = 1e-4


class DriftThresholds(BaseModel):
    """The drift check's settings: ``Settings.drift`` (env ``HEALMESH_DRIFT__<FIELD>``). The feature
    rule and the traffic and importance guards are read by ``policies.drift_alarm`` (the decision);
    the quality fields by ``quality_check`` below. Frozen and validated."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_window: int = 500  # a smaller window is no decision (insufficient_data), never "no drift"
    # A feature drifts when significant (Benjamini-Hochberg at fdr_q over the features' KS / chi-square
    # p-values) and material (PSI >= min_psi, or KS >= min_ks / JS >= min_js). Undrifted 2,000-row
    # windows against a 5,000-row reference: PSI ~0.005 and KS under 0.04 (95 %), so 0.1 is far
    # above noise and is the usual "moderate shift" PSI band; 0 false alarms in 220 undrifted windows.
    fdr_q: float = 0.05
    min_psi: float = 0.1
    min_ks: float = 0.1
    min_js: float = 0.1
    # Real card traffic has (nearly) no duplicate rows: amounts carry cents and times vary.
    max_top_row_share: float = 0.05
    min_distinct_share: float = 0.5
    # Drifted features carrying less than this share of the model's importance do not retrain.
    min_importance: float = 0.05
    # An estimated AUC drop retrains only when it is at least this large and at least impact_z
    # standard errors of the estimate.
    max_auc_drop: float = 0.01
    impact_z: float = 1.645
    # Concept drift: the champion's live AUC (labels joined to its answers) this far under its holdout AUC.
    auc_drop: float = 0.05
    min_quality_labels: int = 300
    min_quality_positives: int = 10

    @model_validator(mode="after")
    def _check(self) -> DriftThresholds:
        need(self.min_window >= 10, "min_window must be >= 10", self.min_window)
        need(0.0 < self.fdr_q < 1.0, "fdr_q must be in (0, 1)", self.fdr_q)
        for name in ("min_psi", "min_ks", "min_js", "max_auc_drop", "auc_drop"):
            need(getattr(self, name) > 0, f"{name} must be > 0", getattr(self, name))
        need(self.min_ks <= 1.0 and self.min_js <= 1.0, "min_ks and min_js must be <= 1", (self.min_ks, self.min_js))
        need(0.0 < self.max_top_row_share <= 1.0, "max_top_row_share must be in (0, 1]", self.max_top_row_share)
        need(0.0 <= self.min_distinct_share < 1.0, "min_distinct_share must be in [0, 1)", self.min_distinct_share)
        need(0.0 <= self.min_importance < 1.0, "min_importance must be in [0, 1)", self.min_importance)
        need(self.impact_z >= 0, "impact_z must be >= 0", self.impact_z)
        need(self.min_quality_labels >= 10, "min_quality_labels must be >= 10", self.min_quality_labels)
        need(self.min_quality_positives >= 1, "min_quality_positives must be >= 1", self.min_quality_positives)
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

    def scores(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items() if isinstance(v, int | float) and not isinstance(v, bool)}


@dataclass(frozen=True)
class QualityCheck:
    labelled: int
    positives: int
    live_auc: float | None
    reference_auc: float | None
    dropped: bool


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


def feature_drift(reference: pd.DataFrame, current: pd.DataFrame) -> dict[str, FeatureDrift]:
    from scipy import stats

    from healmesh import schema

    out: dict[str, FeatureDrift] = {}
    for f in schema.active().features:
        ref, cur = reference[f.name], current[f.name]
        if isinstance(f, schema.CategoricalFeature):
            rc, cc = category_counts(ref, f.categories), category_counts(cur, f.categories)
            keep = (rc + cc) > 0
            chi2_p = float(stats.chi2_contingency(np.array([rc[keep], cc[keep]]))[1]) if keep.sum() > 1 else 1.0
            psi = _psi(rc, cc)
            js = jensen_shannon(rc, cc)
            out[f.name] = FeatureDrift(f.name, "categorical", psi, chi2_p_value=chi2_p, js=js)
        else:
            r, c = ref.to_numpy(dtype=float), cur.to_numpy(dtype=float)
            ks = stats.ks_2samp(r, c)
            psi = psi_numeric(r, c)
            out[f.name] = FeatureDrift(f.name, "numeric", psi, ks=float(ks.statistic), ks_p_value=float(ks.pvalue))
    return out


def quality_check(labels: np.ndarray, probabilities: np.ndarray, reference_auc: float | None,
                  t: DriftThresholds) -> QualityCheck:
    auc = live_auc(labels, probabilities, t.min_quality_labels, t.min_quality_positives)
    dropped = auc is not None and reference_auc is not None and auc < reference_auc - t.auc_drop
    return QualityCheck(len(labels), int(np.sum(labels)), auc, reference_auc, dropped)
