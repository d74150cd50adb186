"""Holdout metrics and the decision threshold. Pure functions of labels and scores."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    f1_score,
    precision_recall_curve,
    roc_auc_score,
)

from healmesh.errors import InvalidData


def choose_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The threshold with the best F1 on ``(y, p)`` (the validation split, never the holdout)."""
    precision, recall, thresholds = precision_recall_curve(y, p)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = int(np.argmax(f1[:-1])) if len(thresholds) else 0
    return float(thresholds[best]) if len(thresholds) else 0.5


def classification_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    y = np.asarray(y)
    p = np.asarray(p, dtype=float)
    if len(np.unique(y)) < 2:
        raise InvalidData("metrics need both classes in the labels")
    pred = (p >= threshold).astype(int)
    return {
        "roc_auc": float(roc_auc_score(y, p)),
        "pr_auc": float(average_precision_score(y, p)),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "brier": float(brier_score_loss(y, p)),
        "threshold": float(threshold),
        "positive_rate": float(y.mean()),
        "n": float(len(y)),
    }
