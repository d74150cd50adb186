"""Tests healmesh.policies.drift: PSI, the drift decision and the quality check."""

import numpy as np
import pytest

from healmesh.data import DriftSpec, generate
from healmesh.policies.drift import DriftThresholds, decide, psi_numeric, quality_check

T = DriftThresholds()


@pytest.fixture(scope="module")
def reference():
    return generate(5_000, seed=1)


def test_psi_is_near_zero_for_the_same_world_and_large_for_a_shift():
    rng = np.random.default_rng(0)
    a, b = rng.lognormal(3, 1, 5_000), rng.lognormal(3, 1, 5_000)
    assert psi_numeric(a, b) < 0.02
    assert psi_numeric(a, b * np.e) > 0.5


def test_same_distribution_is_no_drift(reference):
    result = decide(reference, generate(10_000, seed=2), T)
    assert result.decision == "no_drift" and result.drifted_features == [] and result.reasons == ()


def test_covariate_shift_is_drift_naming_the_features(reference):
    shifted = generate(10_000, seed=3, drift=DriftSpec(covariate_shift={"amount": 1.0, "channel": 0.5}))
    result = decide(reference, shifted, T)
    assert result.decision == "drift"
    assert set(result.drifted_features[:2]) == {"amount", "channel"}
    assert result.features["amount"].psi > 0.25 and result.features["amount"].ks_p_value < 1e-6
    assert result.features["channel"].js is not None and result.features["channel"].chi2_p_value < 1e-6
    assert any(r.startswith("amount: PSI") for r in result.reasons)


def test_a_small_window_is_no_decision_not_no_drift(reference):
    result = decide(reference, generate(100, seed=4), T)
    assert result.decision == "insufficient_data" and "under the minimum" in result.reasons[0]


def test_quality_drop_is_drift_even_without_data_drift(reference):
    y = np.r_[np.ones(50), np.zeros(950)]
    noisy = np.random.default_rng(1).random(1_000)  # an AUC near 0.5
    q = quality_check(y, noisy, reference_auc=0.97, t=T)
    assert q.dropped and q.live_auc < 0.7
    result = decide(reference, generate(5_000, seed=5), T, q)
    assert result.decision == "drift" and "live AUC" in result.reasons[-1]
    assert not quality_check(y[:100], noisy[:100], 0.97, T).dropped  # too few labels: no verdict
