"""Tests healmesh.policies.drift_alarm: BH over the features, the effect floor, anomalous traffic,
importance and estimated impact, the configuration."""

import numpy as np
import pytest
from pydantic import ValidationError

from healmesh.policies.drift import DriftThresholds, FeatureDrift
from healmesh.policies.drift_alarm import (
    EstimatedImpact,
    bh_adjust,
    decide_alarm,
    traffic_profile,
)
from healmesh.policies.drift_decision import DriftDecision

CFG = DriftThresholds()


def num(name: str, p: float, ks: float = 0.3, psi: float = 0.3) -> FeatureDrift:
    return FeatureDrift(name, "numeric", psi, ks=ks, ks_p_value=p)


def cat(name: str, p: float, js: float = 0.3, psi: float = 0.3) -> FeatureDrift:
    return FeatureDrift(name, "categorical", psi, chi2_p_value=p, js=js)


def fmap(*fs: FeatureDrift) -> dict[str, FeatureDrift]:
    return {f.feature: f for f in fs}


def unique_hashes(n: int = 2_000) -> np.ndarray:
    return np.arange(n, dtype=np.uint64)


def test_bh_rejects_the_step_up_set_on_a_hand_made_example():
    # m = 10, q = 0.05: critical values k * 0.005. p_(4) = 0.019 <= 0.02 is the largest k that
    # passes, so ranks 1-4 are rejected although p_(3) = 0.016 > 0.015 (step-up, not step-down).
    p = np.array([0.001, 0.008, 0.016, 0.019, 0.03, 0.2, 0.5, 0.6, 0.8, 0.9])
    shuffled = np.random.default_rng(0).permutation(10)
    adjusted = bh_adjust(p[shuffled])
    assert set(np.flatnonzero(adjusted <= 0.05)) == {int(np.flatnonzero(shuffled == k)[0]) for k in range(4)}
    # Bonferroni at 0.005 would reject only the first; unadjusted p < 0.05 would reject five
    assert (p < 0.005).sum() == 1 and (p < 0.05).sum() == 5
    assert np.all(adjusted >= p[shuffled]) and np.all(adjusted <= 1)

    names = [f"f{k}" for k in range(10)]
    alarm = decide_alarm(fmap(*(num(n, float(pv)) for n, pv in zip(names, p, strict=True))), 2_000,
                         unique_hashes(), cfg=CFG)
    assert alarm.outcome is DriftDecision.DRIFT
    assert sorted(alarm.drifted) == ["f0", "f1", "f2", "f3"]


def test_categorical_features_use_the_chi_square_p_value_and_js():
    alarm = decide_alarm(fmap(cat("channel", 1e-9, js=0.2, psi=0.02), num("amount", 0.9, ks=0.01, psi=0.001)),
                         2_000, unique_hashes())
    assert alarm.drifted == ["channel"] and alarm.retrain


def test_effect_floor_suppresses_tiny_significant_shifts():
    # a huge window: p-values are tiny for shifts of no consequence
    tiny = fmap(num("amount", 1e-30, ks=0.03, psi=0.01), cat("geo", 1e-12, js=0.02, psi=0.004))
    alarm = decide_alarm(tiny, 500_000, None)
    assert alarm.outcome is DriftDecision.NO_DRIFT and alarm.drifted == []
    assert all(f.significant and not f.material for f in alarm.features)
    assert "under the effect floor" in alarm.reasons[1] and alarm.headline.startswith("No drift")
    # the same p-values with a real effect drift
    big = fmap(num("amount", 1e-30, ks=0.15, psi=0.05), cat("geo", 1e-12, js=0.02, psi=0.004))
    assert decide_alarm(big, 500_000, None).drifted == ["amount"]


def test_large_effect_without_significance_is_not_drift():
    assert decide_alarm(fmap(num("amount", 0.2, ks=0.5, psi=1.0)), 600, None).outcome is DriftDecision.NO_DRIFT


def test_one_repeated_row_is_anomalous_traffic_not_a_retrain():
    everything_drifted = fmap(*(num(f"f{k}", 1e-100, ks=0.9, psi=8.3) for k in range(16)))
    alarm = decide_alarm(everything_drifted, 100_000, np.full(100_000, 12345, dtype=np.uint64))
    assert alarm.outcome is DriftDecision.ANOMALOUS_TRAFFIC and not alarm.retrain
    assert alarm.traffic is not None and alarm.traffic.distinct == 1 and alarm.traffic.top_share == 1.0
    assert alarm.headline.startswith("Anomalous traffic, no retrain")


def test_a_few_distinct_rows_are_anomalous_even_when_none_dominates():
    hashes = np.tile(np.arange(50, dtype=np.uint64), 40)  # 2,000 rows, 50 distinct, each 2 %
    profile = traffic_profile(hashes)
    assert (profile.rows, profile.distinct, profile.top_share) == (2_000, 50, 0.02)
    assert decide_alarm(fmap(num("a", 0.5)), 2_000, hashes).outcome is DriftDecision.ANOMALOUS_TRAFFIC
    # one hot row at 10 % with the rest distinct
    hot = np.concatenate([np.zeros(200, np.uint64), np.arange(1, 1_801, dtype=np.uint64)])
    assert decide_alarm(fmap(num("a", 0.5)), 2_000, hot).outcome is DriftDecision.ANOMALOUS_TRAFFIC
    assert decide_alarm(fmap(num("a", 0.5)), 2_000, unique_hashes()).outcome is DriftDecision.NO_DRIFT


def test_small_window_is_insufficient_data():
    alarm = decide_alarm(fmap(num("a", 1e-9)), 499, np.zeros(499))
    assert alarm.outcome is DriftDecision.INSUFFICIENT_DATA and "499" in alarm.headline


FEATS = fmap(num("amount", 1e-12, psi=0.6), num("hour", 0.7, ks=0.02, psi=0.01),
             num("card_age_days", 1e-10, psi=0.4), cat("channel", 0.8, js=0.01, psi=0.005))
IMPORTANCE = {"amount": 50.0, "hour": 30.0, "card_age_days": 1.0, "channel": 19.0}


def test_drift_only_on_an_unimportant_feature_is_reported_not_retrained():
    feats = {**FEATS, "amount": num("amount", 0.6, ks=0.02, psi=0.01)}
    alarm = decide_alarm(feats, 2_000, unique_hashes(), IMPORTANCE)
    assert alarm.outcome is DriftDecision.DRIFT_REPORTED and not alarm.retrain
    assert alarm.drifted == ["card_age_days"] and alarm.drifted_importance == pytest.approx(0.01)
    assert "no retrain" in alarm.headline and "1.0% of the model's importance" in alarm.headline


def test_features_are_ranked_by_drift_times_importance():
    alarm = decide_alarm(FEATS, 2_000, unique_hashes(), IMPORTANCE)
    assert alarm.outcome is DriftDecision.DRIFT
    # amount: 0.6 x 0.5 = 0.3 beats card_age_days: 0.4 x 0.01
    assert [f.feature for f in alarm.features][:2] == ["amount", "card_age_days"]
    assert alarm.features[0].score == pytest.approx(0.3) and alarm.drifted_importance == pytest.approx(0.51)
    # without importance: ranked by PSI alone, and importance is not a veto
    plain = decide_alarm(FEATS, 2_000, unique_hashes())
    assert plain.drifted == ["amount", "card_age_days"] and plain.drifted_importance is None


def test_important_drift_with_an_estimated_auc_drop_retrains():
    drop = EstimatedImpact(estimated_auc=0.93, reference_auc=0.97, standard_error=0.01)
    alarm = decide_alarm(FEATS, 2_000, unique_hashes(), IMPORTANCE, drop)
    assert alarm.outcome is DriftDecision.DRIFT and alarm.retrain
    assert alarm.headline.startswith("Drift, retrain") and "estimated AUC 0.930" in alarm.headline


@pytest.mark.parametrize("estimate, se", [(0.968, 0.005),  # a drop under the tolerance
                                          (0.955, 0.02),  # a material drop within the estimate's noise
                                          (0.99, 0.01)])  # an improvement
def test_important_drift_that_does_not_hurt_estimated_performance_is_reported(estimate, se):
    alarm = decide_alarm(FEATS, 2_000, unique_hashes(), IMPORTANCE, EstimatedImpact(estimate, 0.97, se))
    assert alarm.outcome is DriftDecision.DRIFT_REPORTED and "estimated AUC" in alarm.headline


def test_to_dict_carries_the_decision():
    d = decide_alarm(FEATS, 2_000, unique_hashes(), IMPORTANCE).to_dict()
    assert d["outcome"] == "drift" and d["retrain"] and d["drifted"] == ["amount", "card_age_days"]
    assert d["traffic"]["distinct"] == 2_000 and len(d["features"]) == 4


@pytest.mark.parametrize("bad", [{"fdr_q": 0}, {"fdr_q": 1}, {"min_psi": 0}, {"min_ks": 1.5}, {"min_window": 5},
                                 {"max_top_row_share": 0}, {"min_distinct_share": 1}, {"min_importance": -0.1},
                                 {"max_auc_drop": 0}, {"impact_z": -1}, {"unknown": 1}])
def test_config_validation(bad):
    with pytest.raises(ValidationError):
        DriftThresholds(**bad)


def test_config_is_frozen_and_inputs_are_checked():
    with pytest.raises(ValidationError):
        CFG.fdr_q = 0.1  # type: ignore[misc]
    with pytest.raises(ValueError, match="importance"):
        decide_alarm(FEATS, 2_000, None, {"amount": -1.0})
    with pytest.raises(ValueError, match="no weight"):
        decide_alarm(FEATS, 2_000, None, {"other": 1.0})
    with pytest.raises(ValueError, match="estimated_auc"):
        EstimatedImpact(1.2, 0.9, 0.01)


# --- performance estimated before labels (CBPE) in the drift decision -----------------------

def _world(n: int, seed: int, concept: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Scores of a model whose probabilities ``p`` are true (labels ~ Bernoulli(p)); under concept
    drift the labels follow another rule, so the scores no longer say who is fraud."""
    rng = np.random.default_rng(seed)
    p = rng.beta(0.5, 8, n)
    y = rng.random(n) < (rng.permutation(p) if concept else p)
    return p, y.astype(int)


def test_the_estimate_needs_a_calibrator_and_enough_answers():
    from healmesh.policies.drift_alarm import read_estimate
    from healmesh.policies.estimation import Calibrator

    p, y = _world(5_000, 1)
    none = read_estimate(None, p, y[:0], p[:0], 0.8, 0.5, CFG)
    assert none.impact is None and "no calibrator" in none.note
    cal = Calibrator.fit(y, p)
    few = read_estimate(cal, p[:100], y[:0], p[:0], 0.8, 0.5, CFG)
    assert few.impact is None and "needs 500" in few.note
    no_ref = read_estimate(cal, p, y[:0], p[:0], None, 0.5, CFG)
    assert no_ref.impact is None


def test_labels_that_agree_keep_the_estimate_and_labels_that_contradict_it_drop_it():
    from sklearn.metrics import roc_auc_score

    from healmesh.policies.drift_alarm import read_estimate
    from healmesh.policies.estimation import Calibrator

    ref_p, ref_y = _world(20_000, 2)
    cal = Calibrator.fit(ref_y, ref_p)
    holdout_auc = float(roc_auc_score(ref_y, ref_p))
    p, y = _world(10_000, 3)
    agreed = read_estimate(cal, p, y[:3_000], p[:3_000], holdout_auc, 0.5, CFG)
    assert agreed.check.outcome == "consistent" and agreed.impact is not None
    assert abs(agreed.impact.estimated_auc - holdout_auc) < 0.02 and not agreed.impact.hurts(CFG)
    p, y = _world(10_000, 4, concept=True)  # the scores look as confident as ever; the labels disagree
    drifted = read_estimate(cal, p, y[:3_000], p[:3_000], holdout_auc, 0.5, CFG)
    assert drifted.estimate.estimated_auc > 0.75  # CBPE alone cannot see concept drift
    assert drifted.check.outcome == "gap" and drifted.impact is None
    assert "concept drift, the estimate no longer holds" in drifted.note


def test_an_estimate_the_labels_contradict_cannot_veto_a_retrain(frame):
    """The drift check's whole decision: an important drift that the estimate says is harmless is
    only reported; the same drift, with labels contradicting the estimate, is not vetoed by it."""
    from healmesh.policies.drift_alarm import EstimateReading, decide
    from healmesh.policies.estimation import CheckOutcome, EstimateCheck, PerformanceEstimate

    reference = frame.sample(3_000, replace=True, random_state=1).reset_index(drop=True)
    current = frame.sample(3_000, replace=True, random_state=2).reset_index(drop=True)
    current["distance_from_last_txn_km"] = current["distance_from_last_txn_km"] * 6 + 50
    importance = {"distance_from_last_txn_km": 0.5, "amount": 0.5}
    est = PerformanceEstimate(3_000, 0.97, 0.005, 0.5, 0.5, 0.5, 60.0)
    harmless = EstimateReading(est, None, EstimatedImpact(0.97, 0.97, 0.005), "estimated AUC 0.970")
    reported = decide(reference, current, CFG, importance=importance, estimated=harmless)
    assert reported.decision == "drift_reported" and "estimated AUC 0.970" in reported.headline
    gap = EstimateCheck(CheckOutcome.GAP, 0.97, 0.80, -0.17, 0.05, 3_000, 60)
    contradicted = EstimateReading(est, gap, None, "the estimate no longer holds and is not used")
    retrained = decide(reference, current, CFG, importance=importance, estimated=contradicted)
    assert retrained.decision == "drift" and "the estimate no longer holds" in " ".join(retrained.reasons)
    assert retrained.to_dict()["estimate"]["check"]["outcome"] == "gap"
