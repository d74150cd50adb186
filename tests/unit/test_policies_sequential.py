import math

import numpy as np
import pytest

from healmesh.policies.quality import auc_variance
from healmesh.policies.sequential import (
    AucDiff,
    Evidence,
    JudgeConfig,
    MeanDiff,
    Metric,
    Outcome,
    Stream,
    cs_radius,
    judge,
    mixture_lr,
)

CFG = JudgeConfig(require_quality=False)


def test_radius_inverts_the_mixture_ratio():
    v, tau, a = 0.003, 0.05, 0.05
    r = cs_radius(v, tau, a)
    # exactly on the boundary the ratio is 1/a; inside it is below
    assert mixture_lr(0.1 + r, v, tau, theta0=0.1) == pytest.approx(1 / a, rel=1e-9)
    assert mixture_lr(0.1 + 0.9 * r, v, tau, theta0=0.1) < 1 / a
    assert cs_radius(math.inf, tau, a) == math.inf
    # a sequence is wider than the fixed-n interval (the price of peeking)
    assert r > 1.96 * math.sqrt(v)


def test_confidence_sequence_covers_under_continuous_monitoring():
    """Two-sided 90 % sequence of a mean, read after every sample up to 2,000: misses <= 10 %."""
    rng = np.random.default_rng(7)
    runs, n, a, tau = 400, 2000, 0.10, 0.2
    x = rng.normal(0.3, 1.0, size=(runs, n))
    k = np.arange(1, n + 1)
    means = np.cumsum(x, axis=1) / k
    v = 1.0 / k
    t2 = tau * tau
    r = np.sqrt(2 * v * (v + t2) / t2 * np.log(np.sqrt((v + t2) / v) / a))
    ever_missed = (np.abs(means - 0.3) > r)[:, 10:].any(axis=1).mean()
    assert ever_missed <= a
    # while the fixed-n 90 % interval, read the same way, misses far more often
    assert (np.abs(means - 0.3) > 1.645 * np.sqrt(v))[:, 10:].any(axis=1).mean() > 2 * a


def _err(nc, fc, ns, fs):
    return MeanDiff(Stream.bernoulli(nc, fc), Stream.bernoulli(ns, fs))


def _lat(rng, n, ratio=1.0):
    base = rng.normal(math.log(0.02), 0.3, size=(2, n))
    return MeanDiff(Stream.of(base[0] + math.log(ratio)), Stream.of(base[1]))


def test_equal_streams_continue_then_pass():
    rng = np.random.default_rng(1)
    seen = []
    for n in (50, 200, 1000, 5000, 20000):
        errs = rng.binomial(n, 0.002, size=2)
        ev = Evidence(n, 10.0, _err(n, errs[0], n, errs[1]), _lat(rng, n))
        seen.append(judge(ev, CFG).outcome)
    assert seen[0] is Outcome.CONTINUE
    assert seen[-1] is Outcome.PASS
    assert Outcome.ROLLBACK not in seen


def test_twenty_percent_errors_roll_back_within_a_hundred_calls():
    rng = np.random.default_rng(2)
    ev = Evidence(100, 5.0, _err(100, int(rng.binomial(100, 0.2)), 900, 0), _lat(rng, 100))
    j = judge(ev, CFG)
    assert j.outcome is Outcome.ROLLBACK
    assert "error_rate" in j.reasons[0] and "proven" in j.reasons[0]
    assert j.metrics[Metric.ERROR_RATE].outcome is Outcome.ROLLBACK


def test_slow_canary_rolls_back_even_when_errors_pass():
    rng = np.random.default_rng(3)
    ev = Evidence(3000, 5.0, _err(3000, 0, 3000, 0), _lat(rng, 3000, ratio=2.0))
    j = judge(ev, CFG)
    assert j.outcome is Outcome.ROLLBACK
    assert j.metrics[Metric.LATENCY].outcome is Outcome.ROLLBACK
    assert j.metrics[Metric.ERROR_RATE].outcome is Outcome.PASS  # harm wins over a pass


def _auc_arm(rng, n, d):
    y = rng.random(n) < 0.05
    s = rng.normal(0, 1, n) + d * y
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s)), auc_variance(y, s)


def test_worse_auc_rolls_back_equal_auc_passes():
    rng = np.random.default_rng(4)
    n = 60000
    good, bad = _auc_arm(rng, n, 2.66), _auc_arm(rng, n, 1.65)  # AUC ~0.97 vs ~0.88
    base = dict(error_rate=_err(n, 0, n, 0), latency=_lat(rng, n))
    cfg = JudgeConfig()
    worse = judge(Evidence(n, 60.0, quality=AucDiff(bad[0], bad[1], good[0], good[1], n), **base), cfg)
    assert worse.outcome is Outcome.ROLLBACK and worse.metrics[Metric.QUALITY].kind == "auc"
    same = _auc_arm(rng, n, 2.66)
    equal = judge(Evidence(n, 60.0, quality=AucDiff(same[0], same[1], good[0], good[1], n), **base), cfg)
    assert equal.outcome is Outcome.PASS


def test_estimated_auc_is_flagged_in_the_reasons():
    rng = np.random.default_rng(5)
    n = 5000
    ev = Evidence(n, 60.0, _err(n, 0, n, 0), _lat(rng, n), AucDiff(0.80, 1e-5, 0.97, 1e-5, n, estimated=True))
    j = judge(ev, JudgeConfig())
    assert j.outcome is Outcome.ROLLBACK and "estimated" in j.reasons[0]


def test_missing_quality_is_never_a_pass_and_rolls_back_at_the_limit():
    rng = np.random.default_rng(6)
    cfg = JudgeConfig(max_canary_calls=50_000, max_stage_s=600)
    n = 20000
    ev = Evidence(n, 100.0, _err(n, 0, n, 0), _lat(rng, n))
    j = judge(ev, cfg)
    assert j.outcome is Outcome.CONTINUE and any("quality: no evidence" in r for r in j.reasons)
    late = judge(Evidence(n, 600.0, _err(n, 0, n, 0), _lat(rng, n)), cfg)
    assert late.outcome is Outcome.ROLLBACK
    assert late.reasons[0].startswith("too little evidence: 600s reached the stage limit")
    # without quality required, the same evidence passes
    assert judge(ev, JudgeConfig(require_quality=False)).outcome is Outcome.PASS


def test_too_few_samples_do_not_pass():
    ev = Evidence(100, 1.0, _err(100, 0, 100, 0), MeanDiff(Stream(100, 0.0, 1e-8), Stream(100, 0.0, 1e-8)))
    j = judge(ev, JudgeConfig(require_quality=False, min_pass_samples=500))
    assert j.outcome is Outcome.CONTINUE and "needs 500 to pass" in " ".join(j.reasons)


def test_stream_from_sums_matches_numpy():
    x = np.random.default_rng(8).normal(size=100)
    s = Stream.from_sums(100, float(x.sum()), float((x * x).sum()))
    assert s.mean == pytest.approx(x.mean()) and s.var == pytest.approx(x.var(ddof=1))
    assert Stream.bernoulli(10, 0).var > 0


def test_config_errors_read_must_be_but_was():
    with pytest.raises(ValueError, match="alpha must be in"):
        JudgeConfig(alpha=0)
    with pytest.raises(ValueError, match="auc_margin must be > 0"):
        JudgeConfig(auc_margin=0)
    with pytest.raises(ValueError, match="max_canary_calls must be >= min_pass_samples"):
        JudgeConfig(min_pass_samples=1000, max_canary_calls=10)
    with pytest.raises(ValueError):
        JudgeConfig(bogus=1)
    with pytest.raises(ValueError, match="events must be"):
        Stream.bernoulli(5, 6)


def test_logloss_stream_judges_quality_without_positives_to_pair():
    rng = np.random.default_rng(9)
    n = 20000
    base = dict(error_rate=_err(n, 0, n, 0), latency=_lat(rng, n))
    stable = Stream.of(rng.exponential(0.08, n))  # per-call log-loss, mostly near 0
    cfg = JudgeConfig()
    worse = judge(Evidence(n, 60.0, quality=MeanDiff(Stream.of(rng.exponential(0.16, n)), stable), **base), cfg)
    assert worse.outcome is Outcome.ROLLBACK and worse.metrics[Metric.QUALITY].kind == "logloss"
    same = judge(Evidence(n, 60.0, quality=MeanDiff(Stream.of(rng.exponential(0.08, n)), stable), **base), cfg)
    assert same.outcome is Outcome.PASS
    assert same.as_dict()["metrics"]["quality"]["kind"] == "logloss"


def _disagreeing(quality: AucDiff | None) -> Evidence:
    """A challenger that proves to decide half the rows unlike the champion (the weather example's
    retrain after its data break), with or without quality evidence beside it."""
    rng = np.random.default_rng(11)
    n = 2_000
    return Evidence(n, 60.0, _err(n, 0, n, 0), _lat(rng, n), quality=quality,
                    disagreement=MeanDiff(Stream.bernoulli(n, n // 2), Stream(n, 0.0, 0.0)))


def test_disagreement_explained_by_better_labelled_quality_passes():
    # the canary's labelled AUC 0.92 against a broken champion's 0.32: the heal, not a harm
    j = judge(_disagreeing(AucDiff(0.92, 2e-5, 0.32, 2e-5, 2_000)), CFG)
    assert j.outcome is Outcome.PASS, j.reasons
    d = j.metrics[Metric.DISAGREEMENT]
    assert d.outcome is Outcome.PASS and "labelled quality proves the challenger not worse" in d.reason


def test_disagreement_waits_for_undecided_labelled_quality_and_still_vetoes_without_labels():
    undecided = judge(_disagreeing(AucDiff(0.90, 0.02, 0.90, 0.02, 2_000)), CFG)
    assert undecided.outcome is Outcome.CONTINUE
    assert undecided.metrics[Metric.DISAGREEMENT].outcome is Outcome.CONTINUE
    # an estimate (CBPE) assumes nothing changed in P(y|x): it cannot vouch for a disagreement
    estimated = judge(_disagreeing(AucDiff(0.92, 2e-5, 0.32, 2e-5, 2_000, estimated=True)), CFG)
    assert estimated.outcome is Outcome.ROLLBACK and "disagreement" in estimated.reasons[0]
    assert judge(_disagreeing(None), CFG).outcome is Outcome.ROLLBACK
    # a canary proven worse on labels is rolled back on both
    worse = judge(_disagreeing(AucDiff(0.32, 2e-5, 0.92, 2e-5, 2_000)), CFG)
    assert worse.outcome is Outcome.ROLLBACK and worse.metrics[Metric.DISAGREEMENT].outcome is Outcome.ROLLBACK


def test_disagreement_of_a_challenger_the_gate_proved_better_passes_before_any_label():
    # estimated quality only (no label back yet), but the retrain gate proved it better on labels
    ev = _disagreeing(AucDiff(0.92, 2e-5, 0.86, 2e-5, 2_000, estimated=True))
    proven = judge(Evidence(**{**ev.__dict__, "proven_better": 0.5985}), CFG)
    assert proven.outcome is Outcome.PASS, proven.reasons
    assert "retrain gate proved the challenger better" in proven.metrics[Metric.DISAGREEMENT].reason
    # not worse beyond the margin is not better: the veto stands
    merely = judge(Evidence(**{**ev.__dict__, "proven_better": -0.004}), CFG)
    assert merely.outcome is Outcome.ROLLBACK
