import numpy as np
import pandas as pd
import pytest

from healmesh import schema
from healmesh.data import DriftSpec, generate
from healmesh.lifecycle import canary
from healmesh.lifecycle.canary import (
    CanaryConfig,
    Quality,
    UpstreamStats,
    analyse,
    histogram_quantile,
)
from healmesh.lifecycle.drift import DriftThresholds, decide, psi_numeric, quality_check
from healmesh.lifecycle.retrain import NotEnoughLabels, build_training_set, gate
from healmesh.settings import Settings

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


def test_histogram_quantile_interpolates_like_prometheus():
    buckets = [(0.01, 50.0), (0.05, 90.0), (0.1, 100.0), (float("inf"), 100.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.01)
    assert histogram_quantile(0.95, buckets) == pytest.approx(0.075)
    assert histogram_quantile(0.95, []) is None


CFG = CanaryConfig(interval_s=10, deadline_s=30, min_requests=50, min_error_sample=10, min_latency_sample=20)
GOOD = UpstreamStats(calls=500, failures=1, p95_s=0.02, p50_s=0.01)


@pytest.mark.parametrize("canary_stats,elapsed,kw,status,reason", [
    (UpstreamStats(100, 0, 0.02), 12, {}, "pass", "100 canary calls"),
    (UpstreamStats(100, 0, 0.02), 5, {}, "wait", None),
    (UpstreamStats(20, 0, 0.02), 12, {}, "wait", None),
    (UpstreamStats(20, 0, 0.02), 31, {}, "fail", "by the 30 s deadline"),
    (UpstreamStats(40, 8, 0.02), 2, {}, "fail", "error rate 20.0%"),
    (UpstreamStats(40, 0, 0.30, 0.25), 2, {}, "fail", "p95 300 ms"),
    (UpstreamStats(40, 0, 0.30, 0.01), 2, {}, "wait", None),  # a slow tail, a normal median: stalls, not the model
    (UpstreamStats(15, 0, 0.30, 0.25), 2, {}, "wait", None),  # too few calls for a latency verdict
    (UpstreamStats(5, 5, None), 2, {"canary_breaker_open": True}, "fail", "breaker is open"),
    (UpstreamStats(100, 0, 0.02), 12, {"canary_quality": Quality(300, 10, 0.80),
                                       "stable_quality": Quality(3000, 60, 0.95)}, "fail", "live AUC 0.800"),
])
def test_canary_analysis(canary_stats, elapsed, kw, status, reason):
    verdict = analyse(canary_stats, GOOD, elapsed, CFG, **kw)
    assert verdict.status == status
    if reason:
        assert reason in verdict.reasons[0]


def test_canary_stats_from_two_scrapes():
    before = canary.parse_metrics(
        'healmesh_gateway_upstream_calls_total{upstream="xgboost_canary",result="ok"} 10\n')
    after = canary.parse_metrics(
        'healmesh_gateway_upstream_calls_total{upstream="xgboost_canary",result="ok"} 40\n'
        'healmesh_gateway_upstream_calls_total{upstream="xgboost_canary",result="error"} 5\n'
        'healmesh_gateway_upstream_calls_total{upstream="xgboost_canary",result="overloaded"} 7\n'
        'healmesh_gateway_upstream_calls_total{upstream="xgboost_stable",result="error"} 9\n')
    stats = canary.upstream_stats(before, after, "xgboost_canary")
    assert (stats.calls, stats.failures) == (35, 5)  # overload says nothing about the model


def test_canary_config_is_validated():
    with pytest.raises(ValueError, match="stages must rise"):
        CanaryConfig(stages=(50, 10))
    with pytest.raises(ValueError, match="deadline_s must be >= interval_s"):
        CanaryConfig(interval_s=60, deadline_s=30)


def test_gate_and_training_set_rules():
    assert gate(0.95, 0.952, 0.005).passed and not gate(0.94, 0.952, 0.005).passed
    assert "fails against champion 0.9520" in gate(0.94, 0.952, 0.005).reason
    s = Settings(retrain_min_labels=1_000, retrain_min_positives=20)
    few = generate(500, seed=6)
    with pytest.raises(NotEnoughLabels, match="500 labelled records"):
        build_training_set(few, few, s, seed=0)
    recent, ref = generate(4_000, seed=7), generate(2_000, seed=8)
    data = build_training_set(recent, ref, Settings(retrain_reference_share=0.5), seed=0)
    assert data.reference_rows == round(0.5 * (4_000 - len(data.holdout)))
    assert len(data.holdout) == round(0.3 * 4_000)
    assert isinstance(data.train, pd.DataFrame) and set(data.train.columns) >= set(schema.FEATURE_NAMES)


def test_task_progress_counts_finished_tasks_and_names_running_and_failed_ones():
    from healmesh.lifecycle.airflow_api import task_progress

    line = task_progress({"a": "success", "b": "skipped", "c": "running", "d": None, "e": "failed",
                          "f": "upstream_failed"})
    assert line == "4/6 tasks done; running: c; failed: e"
    assert task_progress({"a": "queued"}) == "0/1 tasks done"
