"""Tests healmesh.policies.quality: live AUC and DeLong's variance."""

import numpy as np
import pytest
from scipy.stats import rankdata

from healmesh.policies.quality import auc_variance, live_auc, midranks


def _delong_by_pairs(labels: np.ndarray, scores: np.ndarray) -> float:
    """DeLong's variance from its definition, every positive against every negative."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    return float(np.var(v10, ddof=1) / len(pos) + np.var(v01, ddof=1) / len(neg))


def test_midranks_are_average_ranks():
    x = np.random.default_rng(1).integers(0, 6, 200).astype(float)
    assert np.allclose(midranks(x), rankdata(x))


@pytest.mark.parametrize("seed,ties", [(2, False), (3, True)])
def test_auc_variance_is_delongs(seed, ties):
    rng = np.random.default_rng(seed)
    labels = (rng.random(400) < 0.1).astype(int)
    scores = rng.normal(labels, 1.0)
    if ties:
        scores = np.round(scores, 1)
    assert auc_variance(labels, scores) == pytest.approx(_delong_by_pairs(labels, scores), rel=1e-9)


def test_auc_variance_needs_two_of_each_class():
    with pytest.raises(ValueError, match="1 positives"):
        auc_variance(np.array([1, 0, 0, 0]), np.array([0.9, 0.1, 0.2, 0.3]))


def test_live_auc_is_none_without_enough_labels_or_positives():
    labels, scores = np.array([0, 1] * 50), np.linspace(0, 1, 100)
    assert live_auc(labels, scores, min_labels=101, min_positives=1) is None
    assert live_auc(labels, scores, min_labels=10, min_positives=51) is None
    # each positive outranks the negatives before it: (1 + 2 + ... + 50) / (50 * 50)
    assert live_auc(labels, scores, min_labels=10, min_positives=5) == pytest.approx(1275 / 2500)
