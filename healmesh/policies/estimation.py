"""Performance estimated before labels arrive: confidence-based performance estimation (CBPE, as
NannyML describes it), in numpy.

A calibrator (isotonic regression by pool-adjacent-violators) is fitted on a labelled reference set
and maps a model's scores to probabilities p_i. If calibration still holds on live traffic (true
under covariate shift, false under concept drift), label i is Bernoulli(p_i), so the expected
confusion matrix at a threshold is E[TP] = sum of p_i over predicted positives, E[FP] = sum of
1 - p_i over them, and so on; the expected ROC curve takes expected TPR/FPR at every threshold.
When labels arrive, ``compare`` checks the realised AUC against the estimate: a gap beyond
sampling error plus a tolerance means calibration broke (concept drift) and the estimate can no
longer be trusted. Pure.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, model_validator


class Calibrator:
    """Monotone (non-decreasing) map from scores to probabilities: isotonic regression fitted by
    pool-adjacent-violators, applied by linear interpolation between block centres (clamped at
    the ends), so it stays monotone and ranks of distinct scores are mostly kept."""

    def __init__(self, knots_x: np.ndarray, knots_y: np.ndarray) -> None:
        self.knots_x = np.asarray(knots_x, dtype=float)
        self.knots_y = np.asarray(knots_y, dtype=float)
        if self.knots_x.ndim != 1 or self.knots_x.shape != self.knots_y.shape or self.knots_x.size == 0:
            raise ValueError("a calibrator needs equally long, non-empty knot arrays")

    @classmethod
    def fit(cls, labels: np.ndarray, scores: np.ndarray) -> Calibrator:
        y = np.asarray(labels, dtype=float)
        s = np.asarray(scores, dtype=float)
        if y.shape != s.shape or y.size == 0:
            raise ValueError(f"labels and scores must be equally long and non-empty, had {y.shape} and {s.shape}")
        order = np.argsort(s, kind="mergesort")
        s, y = s[order], y[order]
        # equal scores form one starting block: a calibrator can't tell them apart
        starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
        weights = np.diff(np.r_[starts, s.size]).astype(float)
        sums_y = np.add.reduceat(y, starts)
        sums_s = np.add.reduceat(s, starts)
        # pool adjacent violators on a stack of blocks (weight, sum of labels, sum of scores)
        w: list[float] = []
        ys: list[float] = []
        ss: list[float] = []
        for wi, yi, si in zip(weights.tolist(), sums_y.tolist(), sums_s.tolist(), strict=True):
            w.append(wi)
            ys.append(yi)
            ss.append(si)
            while len(w) > 1 and ys[-2] / w[-2] >= ys[-1] / w[-1]:
                wl, yl, sl = w.pop(), ys.pop(), ss.pop()
                w[-1] += wl
                ys[-1] += yl
                ss[-1] += sl
        wa = np.array(w)
        return cls(np.array(ss) / wa, np.array(ys) / wa)

    def apply(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(np.interp(np.asarray(scores, dtype=float), self.knots_x, self.knots_y), dtype=float)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "isotonic", "knots_x": self.knots_x.tolist(), "knots_y": self.knots_y.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibrator:
        if data.get("kind") != "isotonic":
            raise ValueError(f"unknown calibrator kind {data.get('kind')!r}")
        return cls(np.asarray(data["knots_x"], dtype=float), np.asarray(data["knots_y"], dtype=float))


@dataclass(frozen=True)
class PerformanceEstimate:
    n: int
    estimated_auc: float
    auc_se: float  # sampling spread of the realised AUC around the estimate, if calibration holds
    precision: float
    recall: float
    f1: float
    expected_positives: float


def _expected_auc(p: np.ndarray) -> tuple[float, float]:
    """Expected AUC and its standard error from calibrated probabilities.

    AUC: NannyML's way, the area under the expected ROC curve (expected TPR/FPR at each distinct
    probability taken as a threshold, ties a single step, so the trapezoid gives ties half credit).

    SE: DeLong's variance with each row counted as a positive with weight p_i and a negative with
    weight 1 - p_i (the placement values are the expected shares of the other class ranked below
    or above it). O(n log n), no resampling; the unit tests check it against the spread of the
    realised AUC over Bernoulli label draws."""
    p_sorted = np.sort(p)[::-1]
    starts = np.flatnonzero(np.r_[True, p_sorted[1:] != p_sorted[:-1]])
    pos_mass = np.add.reduceat(p_sorted, starts)
    neg_mass = np.add.reduceat(1.0 - p_sorted, starts)
    m, n = float(pos_mass.sum()), float(neg_mass.sum())
    if m <= 0.0 or n <= 0.0:
        return math.nan, math.nan
    tpr = np.r_[0.0, np.cumsum(pos_mass)] / m
    fpr = np.r_[0.0, np.cumsum(neg_mass)] / n
    auc = float(np.sum((fpr[1:] - fpr[:-1]) * (tpr[1:] + tpr[:-1]) / 2.0))
    # per distinct value: negative mass strictly below (ascending order) plus half the tied mass
    pos_asc, neg_asc = pos_mass[::-1], neg_mass[::-1]
    neg_below = (np.cumsum(neg_asc) - neg_asc + neg_asc / 2.0) / n
    pos_above = (m - np.cumsum(pos_asc) + pos_asc / 2.0) / m
    var10 = float(np.sum(pos_asc * (neg_below - auc) ** 2)) / m
    var01 = float(np.sum(neg_asc * (pos_above - auc) ** 2)) / n
    return auc, math.sqrt(max(var10 / m + var01 / n, 0.0))


def estimate(probabilities: np.ndarray, threshold: float, predictions: np.ndarray | None = None) -> PerformanceEstimate:
    """Expected performance over an unlabelled window of calibrated probabilities. Rows with
    ``probability >= threshold`` are the predicted positives, unless ``predictions`` (booleans, the
    model's own decisions on its raw scores) is given."""
    p = np.clip(np.asarray(probabilities, dtype=float), 0.0, 1.0)
    if p.ndim != 1 or p.size == 0:
        raise ValueError("estimate needs a non-empty 1-d array of probabilities")
    pred = (p >= threshold) if predictions is None else np.asarray(predictions, dtype=bool)
    if pred.shape != p.shape:
        raise ValueError(f"predictions must match probabilities, had {pred.shape} and {p.shape}")
    e_tp = float(p[pred].sum())
    e_fp = float((1.0 - p[pred]).sum())
    e_fn = float(p[~pred].sum())
    precision = e_tp / (e_tp + e_fp) if e_tp + e_fp > 0 else math.nan
    recall = e_tp / (e_tp + e_fn) if e_tp + e_fn > 0 else math.nan
    f1 = 2 * e_tp / (2 * e_tp + e_fp + e_fn) if e_tp + e_fp + e_fn > 0 else math.nan
    auc, se = _expected_auc(p)
    return PerformanceEstimate(n=int(p.size), estimated_auc=auc, auc_se=se, precision=precision, recall=recall,
                               f1=f1, expected_positives=float(p.sum()))


class EstimationConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    # gap allowed beyond sampling error: covers calibration error of the reference fit
    tolerance: float = 0.02
    z: float = NormalDist().inv_cdf(0.995)  # two-sided 1 % on the sampling part
    min_labels: int = 200
    min_positives: int = 10

    @model_validator(mode="after")
    def _check(self) -> EstimationConfig:
        if not 0.0 <= self.tolerance < 0.5:
            raise ValueError(f"tolerance must be in [0, 0.5), but was {self.tolerance}")
        if self.z <= 0:
            raise ValueError(f"z must be > 0, but was {self.z}")
        if self.min_labels < 2:
            raise ValueError(f"min_labels must be >= 2, but was {self.min_labels}")
        if self.min_positives < 2:
            raise ValueError(f"min_positives must be >= 2, but was {self.min_positives}")
        return self


class CheckOutcome(enum.StrEnum):
    CONSISTENT = "consistent"
    GAP = "gap"  # concept drift: the estimate can no longer be trusted
    INSUFFICIENT_LABELS = "insufficient_labels"


@dataclass(frozen=True)
class EstimateCheck:
    outcome: CheckOutcome
    estimated_auc: float
    realised_auc: float | None
    gap: float | None  # realised minus estimated
    allowed: float | None  # |gap| above this is a GAP
    labels: int
    positives: int


def compare(est: PerformanceEstimate, labels: np.ndarray, probabilities: np.ndarray,
            cfg: EstimationConfig) -> EstimateCheck:
    """Check an estimate once labels came back. ``probabilities`` are the calibrated probabilities
    of the labelled rows (any monotone score gives the same realised AUC, but the estimate's
    sampling error is recomputed from them). If the labelled rows are not the estimate's window
    (different n), the window estimate's own sampling error is added too."""
    from healmesh.policies.quality import live_auc

    y = np.asarray(labels).astype(int)
    p = np.asarray(probabilities, dtype=float)
    n, positives = int(y.size), int(y.sum())
    realised = live_auc(y, p, cfg.min_labels, cfg.min_positives)
    if realised is None or n - positives < cfg.min_positives:
        return EstimateCheck(CheckOutcome.INSUFFICIENT_LABELS, est.estimated_auc, None, None, None, n, positives)
    labelled_se = _expected_auc(np.clip(p, 0.0, 1.0))[1]
    var = labelled_se ** 2 + (est.auc_se ** 2 if est.n != n else 0.0)
    allowed = cfg.z * math.sqrt(var) + cfg.tolerance
    gap = realised - est.estimated_auc
    outcome = CheckOutcome.GAP if abs(gap) > allowed else CheckOutcome.CONSISTENT
    return EstimateCheck(outcome, est.estimated_auc, realised, gap, allowed, n, positives)
