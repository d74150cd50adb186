"""Tests healmesh.policies.gate (the paired DeLong gate with confidence) and the holdout it is given:
healmesh.lifecycle.retrain.build_training_set."""

import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from healmesh import schema
from healmesh.data import generate
from healmesh.lifecycle.retrain import NotEnoughLabels, build_training_set
from healmesh.policies.gate import GateConfig, GateOutcome, gate_with_confidence, paired_auc
from healmesh.settings import RetrainConfig, Settings


def test_training_set_rules():
    s = Settings(retrain=RetrainConfig(min_labels=1_000, min_positives=20))
    few = generate(500, seed=6)
    with pytest.raises(NotEnoughLabels, match="500 labelled records"):
        build_training_set(few, few, s, seed=0)
    recent, ref = generate(4_000, seed=7), generate(2_000, seed=8)
    data = build_training_set(recent, ref, Settings(retrain=RetrainConfig(reference_share=0.5)), seed=0)
    assert data.reference_rows == round(0.5 * (4_000 - len(data.holdout)))
    assert len(data.holdout) == round(0.3 * 4_000)
    assert isinstance(data.train, pd.DataFrame) and set(data.train.columns) >= set(schema.active().feature_names)


def test_the_holdout_does_not_depend_on_the_order_records_arrived_in():
    """Concurrent senders interleave the feature log differently run to run; the same labelled window must
    give the same holdout, so a retrain's gate verdict is reproducible from its window."""
    recent, ref = generate(3_000, seed=9), generate(1_000, seed=10)
    s = Settings()
    first = build_training_set(recent, ref, s, seed=0)
    shuffled = build_training_set(recent.sample(frac=1.0, random_state=3), ref, s, seed=0)
    key = list(schema.active().feature_names) + [schema.active().label]
    pd.testing.assert_frame_equal(first.holdout[key], shuffled.holdout[key])
    pd.testing.assert_frame_equal(first.train[key], shuffled.train[key])


def _paired_by_pairs(labels, a, b):
    """Var(AUC_a - AUC_b) from DeLong's definition: every positive against every negative, for both models."""
    def psi(s):
        pos, neg = s[labels == 1], s[labels == 0]
        return (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    pa, pb = psi(a), psi(b)
    m, n = pa.shape
    s10 = np.cov(np.vstack([pa.mean(axis=1), pb.mean(axis=1)]))
    s01 = np.cov(np.vstack([pa.mean(axis=0), pb.mean(axis=0)]))
    s = s10 / m + s01 / n
    return pa.mean() - pb.mean(), s[0, 0] + s[1, 1] - 2 * s[0, 1]


def _holdout(n, rate, worse_noise, seed):
    """Two models of the same data: a shared latent plus independent noise; ``worse_noise`` adds to the
    candidate's noise."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < rate).astype(int)
    latent = rng.normal(2.0 * labels, 1.0)
    return labels, latent + rng.normal(0, 0.5 + worse_noise, n), latent + rng.normal(0, 0.5, n)


@pytest.mark.parametrize("ties", [False, True])
def test_paired_variance_is_delongs(ties):
    labels, a, b = _holdout(300, 0.1, 0.3, seed=4)
    if ties:
        a, b = np.round(a), np.round(b)
    p = paired_auc(labels, a, b)
    diff, var = _paired_by_pairs(labels, a, b)
    assert p.difference == pytest.approx(diff) and p.variance == pytest.approx(var)
    assert p.variance > 0 and p.positives == labels.sum()


def test_identical_scores_pass_when_above_the_floor():
    labels, a, _ = _holdout(2_000, 0.05, 0.0, seed=5)
    d = gate_with_confidence(labels, a, a.copy(), GateConfig())
    assert d.difference == 0 and d.lower == d.upper == 0 and d.outcome is GateOutcome.PASS and d.passed
    low = gate_with_confidence(labels, a, a.copy(), GateConfig(floor=0.999))
    assert low.outcome is GateOutcome.REJECT and "below the floor" in low.reason


def test_clearly_worse_candidate_is_rejected_on_a_big_holdout():
    labels, a, b = _holdout(20_000, 0.05, 1.5, seed=6)
    d = gate_with_confidence(labels, a, b, GateConfig(floor=0.6))
    assert d.outcome is GateOutcome.REJECT and d.upper < -0.005 and "proven worse" in d.reason
    assert d.p_value is not None and d.p_value > 0.99


def test_few_positives_or_a_wide_interval_is_insufficient_evidence():
    labels, a, b = _holdout(300, 0.02, 0.0, seed=7)
    d = gate_with_confidence(labels, a, b, GateConfig())
    assert d.outcome is GateOutcome.INSUFFICIENT_EVIDENCE and not d.passed and d.difference is None
    wide = gate_with_confidence(labels, a, b, GateConfig(min_positives=2, floor=0.6))
    assert wide.outcome is GateOutcome.INSUFFICIENT_EVIDENCE and wide.lower < -0.005 < wide.upper
    logged = wide.as_mlflow()
    assert logged["params"]["gate_outcome"] == "insufficient_evidence"
    assert logged["metrics"]["gate_ci_lower"] == wide.lower and logged["metrics"]["gate_positives"] == labels.sum()


@pytest.mark.parametrize("bad", [{"alpha": 0.0}, {"alpha": 0.6}, {"margin": -0.1}, {"floor": 0.4},
                                 {"min_positives": 1}, {"margin": 0.5}, {"nope": 1}])
def test_gate_config_is_validated(bad):
    with pytest.raises(ValidationError):
        GateConfig(**bad)
    with pytest.raises(ValidationError):
        GateConfig().alpha = 0.1  # type: ignore[misc]
