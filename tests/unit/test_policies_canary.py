"""Tests healmesh.policies.canary: the evidence the sequential judge reads (error counts, log latency
from the histogram, labelled or estimated AUC), the verdict, stable pooled across stages, the config."""

import math

import numpy as np
import pytest

from healmesh.policies.canary import (
    Answers,
    CanaryConfig,
    UpstreamStats,
    analyse,
    histogram_quantile,
    log_latency_stream,
    pooled,
    quality_evidence,
)
from healmesh.policies.sequential import JudgeConfig

INF = float("inf")


def test_histogram_quantile_interpolates_like_prometheus():
    buckets = [(0.01, 50.0), (0.05, 90.0), (0.1, 100.0), (float("inf"), 100.0)]
    assert histogram_quantile(0.5, buckets) == pytest.approx(0.01)
    assert histogram_quantile(0.95, buckets) == pytest.approx(0.075)
    assert histogram_quantile(0.95, []) is None


def test_log_latency_puts_each_bucket_at_its_log_middle_with_its_width_as_spread():
    one_bucket = log_latency_stream([(0.01, 0.0), (0.02, 40.0), (0.05, 40.0), (INF, 40.0)])
    assert one_bucket.n == 40 and one_bucket.mean == pytest.approx(math.log(math.sqrt(0.01 * 0.02)))
    # 40 values uniform in a bucket of log width log 2: variance (log 2)^2 / 12 (times n/(n-1))
    assert one_bucket.var == pytest.approx(math.log(2) ** 2 / 12 * 40 / 39)
    first = log_latency_stream([(0.004, 10.0), (INF, 10.0)])  # the first bucket starts at half its bound
    assert first.mean == pytest.approx(math.log(math.sqrt(0.002 * 0.004)))
    tail = log_latency_stream([(2.5, 0.0), (INF, 5.0)])  # past the last bound: twice it
    assert tail.n == 5 and tail.mean == pytest.approx(math.log(5.0))
    assert log_latency_stream([]).n == 0


def _stats(calls: int, failures: int, latency_s: float = 0.01) -> UpstreamStats:
    return UpstreamStats(calls, failures, latency_s, latency_s,
                         log_latency_stream([(latency_s * 0.8, 0.0), (latency_s * 1.25, float(calls)), (INF, calls)]))


NO_QUALITY = CanaryConfig(judge=JudgeConfig(require_quality=False, min_pass_samples=200, max_stage_s=300))
STABLE = _stats(5_000, 5)


@pytest.mark.parametrize("canary,elapsed,kw,status,reason", [
    (_stats(1_000, 1), 30, {}, "pass", "error_rate"),
    (_stats(100, 0), 30, {}, "wait", "needs 200 to pass"),  # healthy, but too few calls to pass
    (_stats(100, 20), 5, {}, "fail", "error_rate (error rate): canary - stable = +0.199"),
    (_stats(100, 0, 0.3), 5, {}, "fail", "latency (log latency)"),  # 30x slower on every call
    (_stats(5, 5), 2, {"canary_breaker_open": True}, "fail", "breaker is open"),
    (_stats(100, 0), 300, {}, "fail", "too little evidence: 300s reached the stage limit of 300s"),
])
def test_the_verdict_is_the_judges(canary, elapsed, kw, status, reason):
    verdict = analyse(canary, STABLE, elapsed, NO_QUALITY, **kw)
    assert verdict.status == status
    assert reason in " ".join(verdict.reasons), verdict.reasons


def test_no_quality_evidence_is_never_a_pass_when_quality_is_required():
    # the defect: a stage passed on calls alone, with no label and no estimate (the old analyse
    # passed 100 healthy canary calls after its interval); now it waits, and at the limit rolls back
    cfg = CanaryConfig(judge=JudgeConfig(require_quality=True, max_stage_s=300))
    waiting = analyse(_stats(5_000, 0), STABLE, 60, cfg)
    assert waiting.status == "wait" and "quality: no evidence yet" in waiting.reasons
    limit = analyse(_stats(5_000, 0), STABLE, 300, cfg)
    assert limit.status == "fail" and limit.reasons[0].startswith("too little evidence")


def _answers(n: int, seed: int, informative: bool, labelled: int = 0) -> Answers:
    """Scores of a model on n transactions with 10 % fraud; ``informative`` False: shuffled-label
    scores (near the base rate, unrelated to the label)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.10).astype(int)
    if informative:
        p = 1 / (1 + np.exp(-(rng.normal(0, 1, n) + 2.5 * y - 3.2)))
    else:
        p = np.clip(0.10 + rng.normal(0, 0.005, n), 0.001, 0.999)
    return Answers(p, p[:labelled], y[:labelled])


def test_quality_is_estimated_from_the_answers_until_labels_arrive():
    cfg = CanaryConfig(min_quality_labels=200, min_quality_positives=10, min_estimate_answers=200)
    good, worse = _answers(3_000, 1, True), _answers(3_000, 2, False)
    est = quality_evidence(worse, good, cfg)
    assert est is not None and est.estimated and est.canary_labels == 3_000
    assert est.stable_auc - est.canary_auc > 0.2  # CBPE sees the shuffled model ranks nothing
    verdict = analyse(_stats(3_000, 0), _stats(3_000, 0), 30, CanaryConfig(judge=JudgeConfig(max_stage_s=300)),
                      quality=est)
    assert verdict.status == "fail" and "estimated AUC drop (CBPE, no labels)" in verdict.reasons[0]
    assert quality_evidence(_answers(100, 1, True), good, cfg) is None  # too few answers to estimate
    off = CanaryConfig(min_estimate_answers=0)
    assert quality_evidence(worse, good, off) is None


def test_labelled_auc_replaces_the_estimate_once_both_variants_have_enough_labels():
    cfg = CanaryConfig(min_quality_labels=200, min_quality_positives=10)
    canary, stable = _answers(3_000, 3, True, labelled=1_000), _answers(3_000, 4, True, labelled=150)
    assert quality_evidence(canary, stable, cfg).estimated  # stable has too few labels yet
    stable = _answers(3_000, 4, True, labelled=1_000)
    labelled = quality_evidence(canary, stable, cfg)
    assert not labelled.estimated and labelled.canary_labels == 1_000
    assert 0 < labelled.canary_var < 0.01 and 0.8 < labelled.canary_auc < 1


def test_stable_is_pooled_over_earlier_stages_so_stage_100_can_decide():
    canary = _stats(2_000, 0)
    alone = analyse(canary, _stats(0, 0), 30, NO_QUALITY)  # at 100 % stable serves nothing
    assert alone.status == "wait"
    earlier = [_stats(3_000, 2).sums(), _stats(1_000, 1).sums()]
    stable = pooled(_stats(0, 0), earlier)
    assert (stable.calls, stable.failures) == (4_000, 3) and stable.log_latency.n == 4_000
    assert stable.log_latency.mean == pytest.approx(_stats(1, 0).log_latency.mean)
    assert analyse(canary, stable, 30, NO_QUALITY).status == "pass"


def test_canary_config_is_validated():
    with pytest.raises(ValueError, match="stages must rise"):
        CanaryConfig(stages=(50, 10))
    with pytest.raises(ValueError, match="check_every_s must be > 0"):
        CanaryConfig(check_every_s=0)
    with pytest.raises(ValueError, match="interval_s"):
        CanaryConfig(interval_s=60)  # the fixed-length stage is gone: the judge decides when
    assert CanaryConfig(judge={"alpha": 0.01}).judge.alpha == 0.01


def test_the_shadow_stage_judges_disagreement_with_the_champion_and_needs_it_to_pass():
    from healmesh.policies.canary import disagreement_evidence

    assert disagreement_evidence(1, 0) is None
    fine = analyse(_stats(2_000, 0), STABLE, 30, NO_QUALITY, disagreement=disagreement_evidence(2_000, 40))
    assert fine.status == "pass" and fine.details["disagreement"] == {"compared": 2_000, "rate": 0.02}
    assert fine.details["judge"]["metrics"]["disagreement"]["outcome"] == "pass"
    other = analyse(_stats(2_000, 0), STABLE, 30, NO_QUALITY, disagreement=disagreement_evidence(2_000, 600))
    assert other.status == "fail" and "disagreement (share of decisions unlike the champion's)" in other.reasons[0]
    # required once given: too few compared answers keep an otherwise healthy shadow stage waiting
    few = analyse(_stats(2_000, 0), STABLE, 30, NO_QUALITY, disagreement=disagreement_evidence(50, 1))
    assert few.status == "wait" and any(r.startswith("disagreement") for r in few.reasons)


def test_the_judges_brief_names_every_metric_with_its_bounds():
    verdict = analyse(_stats(2_000, 0), STABLE, 30, CanaryConfig(judge=JudgeConfig(max_stage_s=300)))
    brief = verdict.details["judge"]["brief"]
    assert brief.startswith("error rate -0.001 [") and "; log latency +0 [" in brief and "vs 0.223 (2000)" in brief
    assert brief.endswith("quality: no evidence")
