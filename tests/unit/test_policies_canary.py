"""Tests healmesh.policies.canary: the canary verdict, its config and the histogram quantile."""

import pytest

from healmesh.policies.canary import (
    CanaryConfig,
    Quality,
    UpstreamStats,
    analyse,
    histogram_quantile,
)


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


def test_canary_config_is_validated():
    with pytest.raises(ValueError, match="stages must rise"):
        CanaryConfig(stages=(50, 10))
    with pytest.raises(ValueError, match="deadline_s must be >= interval_s"):
        CanaryConfig(interval_s=60, deadline_s=30)


# --- issue 8, item 0: a pass needs the evidence of every check -------------------------------

def test_a_pass_waits_for_the_latency_sample_even_past_min_requests():
    # the flaky test's configuration: a pass after 20 calls, the latency check only from 40
    cfg = CanaryConfig(interval_s=4, deadline_s=40, min_requests=20, min_latency_sample=40)
    slow = UpstreamStats(calls=30, failures=0, p95_s=0.33, p50_s=0.31)  # a 300 ms canary
    stable = UpstreamStats(calls=600, failures=0, p95_s=0.02, p50_s=0.01)
    assert analyse(slow, stable, 5.0, cfg).status == "wait"  # was "pass": latency never checked
    assert cfg.pass_sample == 40
    verdict = analyse(UpstreamStats(calls=40, failures=0, p95_s=0.33, p50_s=0.31), stable, 5.0, cfg)
    assert verdict.status == "fail" and "canary p95 330 ms" in verdict.reasons[0]
    late = analyse(UpstreamStats(calls=30, failures=0, p95_s=0.02, p50_s=0.01), stable, 41.0, cfg)
    assert late.status == "fail" and "(needs 40)" in late.reasons[0]
