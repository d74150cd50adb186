"""Tests healmesh.policies.drift (PSI, the quality check) and the drift check's whole decision on real
tables (healmesh.policies.drift_alarm.decide)."""

import numpy as np
import pandas as pd
import pytest

from healmesh import schema
from healmesh.data import DriftSpec, generate
from healmesh.policies.drift import DriftThresholds, psi_numeric, quality_check
from healmesh.policies.drift_alarm import decide
from healmesh.policies.drift_decision import DriftDecision

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
    assert result.decision == "no_drift" and result.drifted_features == [] and result.headline.startswith("No drift")


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


def test_a_replayed_transaction_is_anomalous_traffic_never_a_retrain(reference):
    """Issue 11: 100,000 copies of one transaction flagged 15 of 16 features (PSI 8.3) and retrained.
    Its labels are no evidence either: a live-AUC drop on it does not retrain."""
    replayed = pd.concat([generate(1, seed=40)] * 2_000, ignore_index=True)
    y = np.r_[np.ones(50), np.zeros(950)]
    dropped = quality_check(y, np.random.default_rng(2).random(1_000), reference_auc=0.97, t=T)
    for quality in (None, dropped):
        result = decide(reference, replayed, T, quality)
        assert result.decision == DriftDecision.ANOMALOUS_TRAFFIC, result.reasons
        assert result.headline.startswith("Anomalous traffic, no retrain") and result.drifted_features == []


def test_a_shift_on_an_unimportant_feature_is_reported_without_a_retrain(reference):
    shifted = generate(5_000, seed=41, drift=DriftSpec(covariate_shift={"customer_age_years": 1.0}))
    importance = {name: 1.0 for name in schema.active().feature_names} | {"customer_age_years": 0.01}
    result = decide(reference, shifted, T, importance=importance)
    assert result.decision == DriftDecision.DRIFT_REPORTED and result.drifted_features == ["customer_age_years"]
    assert result.headline.startswith("Drift reported, no retrain") and "importance" in result.headline
    # the same shift on a feature the model leans on retrains
    heavy = decide(reference, shifted, T, importance=importance | {"customer_age_years": 30.0})
    assert heavy.decision == DriftDecision.DRIFT and heavy.headline.startswith("Drift, retrain")
    assert heavy.to_dict()["alarm"]["drifted_importance"] > 0.5


def test_a_quality_drop_retrains_even_when_the_features_only_report(reference):
    shifted = generate(5_000, seed=42, drift=DriftSpec(covariate_shift={"customer_age_years": 1.0}))
    importance = {name: 1.0 for name in schema.active().feature_names} | {"customer_age_years": 0.01}
    y = np.r_[np.ones(50), np.zeros(950)]
    dropped = quality_check(y, np.random.default_rng(3).random(1_000), reference_auc=0.97, t=T)
    result = decide(reference, shifted, T, dropped, importance=importance)
    assert result.decision == DriftDecision.DRIFT and result.alarm.outcome == "drift_reported"
    assert result.headline.startswith("Drift, retrain: the champion's live AUC") and "live AUC" in result.reasons[-1]
