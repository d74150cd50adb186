import numpy as np
import pytest
from pydantic import ValidationError
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from healmesh.policies.estimation import (
    Calibrator,
    CheckOutcome,
    EstimationConfig,
    compare,
    estimate,
)


def test_calibrator_is_monotone_and_fixes_squared_scores() -> None:
    rng = np.random.default_rng(1)
    p = rng.random(50_000)
    y = rng.random(p.size) < p
    cal = Calibrator.fit(y, p**2)  # scores = p^2: badly under-confident in the middle
    grid = np.linspace(0, 1, 201)
    out = cal.apply(grid)
    assert np.all(np.diff(out) >= 0)
    assert np.all((out >= 0) & (out <= 1))
    probe = np.array([0.2, 0.5, 0.8])
    assert np.max(np.abs(cal.apply(probe**2) - probe)) < 0.03
    assert np.max(np.abs(probe**2 - probe)) > 0.2  # the raw scores were far off


def test_calibrator_round_trips_through_a_dict() -> None:
    cal = Calibrator.fit(np.array([0, 1, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.8, 0.9]))
    back = Calibrator.from_dict(cal.to_dict())
    x = np.linspace(0, 1, 11)
    assert np.array_equal(back.apply(x), cal.apply(x))
    with pytest.raises(ValueError):
        Calibrator.from_dict({"kind": "platt"})


def test_estimates_match_realised_metrics_for_a_calibrated_model() -> None:
    rng = np.random.default_rng(2)
    p = rng.beta(0.6, 6, 50_000)
    y = rng.random(p.size) < p
    est = estimate(p, 0.3)
    assert abs(est.estimated_auc - roc_auc_score(y, p)) < 0.01
    pred = p >= 0.3
    assert abs(est.precision - precision_score(y, pred)) < 0.02
    assert abs(est.recall - recall_score(y, pred)) < 0.02
    assert abs(est.f1 - f1_score(y, pred)) < 0.02
    assert abs(est.expected_positives - y.sum()) < 4 * np.sqrt(y.sum())


def test_auc_se_matches_spread_of_realised_auc() -> None:
    rng = np.random.default_rng(3)
    p = rng.beta(0.5, 8, 2_000)
    est = estimate(p, 0.5)
    aucs = [roc_auc_score(rng.random(p.size) < p, p) for _ in range(200)]
    assert 0.8 < est.auc_se / np.std(aucs) < 1.3
    assert abs(np.mean(aucs) - est.estimated_auc) < 0.005


def test_check_is_consistent_under_covariate_shift_and_flags_concept_drift() -> None:
    rng = np.random.default_rng(4)
    cfg = EstimationConfig()
    # reference: a score that is p^2 (mis-calibrated), calibrated on labelled reference rows
    p_ref = rng.beta(0.5, 5, 20_000)
    cal = Calibrator.fit(rng.random(p_ref.size) < p_ref, p_ref**2)
    # covariate shift: many more risky rows, the score -> label relation unchanged
    p_shift = rng.beta(1.0, 3, 3_000)
    probs = cal.apply(p_shift**2)
    y = rng.random(p_shift.size) < p_shift
    check = compare(estimate(probs, 0.5), y, probs, cfg)
    assert check.outcome is CheckOutcome.CONSISTENT
    # concept drift: labels now follow a different function of the inputs than the score does
    y_drift = rng.random(p_shift.size) < np.roll(p_shift, 1)  # risk no longer tied to this row's score
    check = compare(estimate(probs, 0.5), y_drift, probs, cfg)
    assert check.outcome is CheckOutcome.GAP
    assert check.gap is not None and check.allowed is not None and -check.gap > check.allowed


def test_check_needs_enough_labels() -> None:
    est = estimate(np.full(100, 0.1), 0.5)
    check = compare(est, np.r_[np.ones(3), np.zeros(97)], np.full(100, 0.1), EstimationConfig())
    assert check.outcome is CheckOutcome.INSUFFICIENT_LABELS and check.realised_auc is None


def test_config_validates() -> None:
    with pytest.raises(ValidationError):
        EstimationConfig(tolerance=-0.1)
    with pytest.raises(ValidationError):
        EstimationConfig(min_positives=1)
