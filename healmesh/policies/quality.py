"""Live quality: how well a model ranks its live answers, once their feedback labels came back.
Used by the canary judge and the drift decision. Pure."""

from __future__ import annotations

import numpy as np


def live_auc(labels: np.ndarray, probabilities: np.ndarray, min_labels: int, min_positives: int) -> float | None:
    """ROC AUC of live answers against their feedback labels; None when there are too few
    labels, too few positives, or only one class to rank."""
    n, positives = len(labels), int(np.sum(labels))
    if n < min_labels or positives < min_positives or positives == n:
        return None
    from sklearn.metrics import roc_auc_score  # deferred: Settings imports this module's neighbours

    return float(roc_auc_score(labels, probabilities))


def midranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given their mean rank (as scipy's rankdata 'average')."""
    order = np.argsort(x, kind="mergesort")
    ordered = x[order]
    # runs of equal values: each gets the mean of the ranks it spans
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(x)]
    mean_rank = (starts + ends + 1) / 2.0
    ranks = np.empty(len(x), dtype=float)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def structural_components(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components through midranks in O(n log n) (Sun and Xu 2014): V10, per
    positive the share of negatives ranked below it, and V01, per negative the share of positives
    ranked above it (ties count half). The AUC is the mean of either."""
    m, n = len(pos), len(neg)
    all_ranks = midranks(np.concatenate([pos, neg]))
    v10 = (all_ranks[:m] - midranks(pos)) / n
    v01 = 1.0 - (all_ranks[m:] - midranks(neg)) / m
    return v10, v01


def auc_variance(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """DeLong's variance of the empirical AUC (DeLong et al. 1988). Needs two of each class."""
    y = np.asarray(labels).astype(bool)
    p = np.asarray(probabilities, dtype=float)
    pos, neg = p[y], p[~y]
    m, n = len(pos), len(neg)
    if m < 2 or n < 2:
        raise ValueError(f"DeLong's variance needs two of each class, but had {m} positives and {n} negatives")
    v10, v01 = structural_components(pos, neg)
    return float(np.var(v10, ddof=1) / m + np.var(v01, ddof=1) / n)
