"""Tests healmesh.policies.evidence: counter evidence across scrapes, restarts and resets."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from healmesh.policies import canary, evidence
from healmesh.policies.canary import (
    CanaryConfig,
    UpstreamStats,
    analyse,
)
from healmesh.policies.sequential import JudgeConfig

# the canary config the restart test judges by: error rate and latency, no quality
CFG = CanaryConfig(judge=JudgeConfig(require_quality=False))


def test_canary_stats_from_two_scrapes():
    before = canary.parse_metrics(
        'healmesh_gateway_upstream_calls_total{upstream="xgboost_canary",result="ok"} 10\n')
    after = canary.parse_metrics(
        'healmesh_gateway_upstream_calls_total{upstream="xgboost_canary",result="ok"} 40\n'
        'healmesh_gateway_upstream_calls_total{upstream="xgboost_canary",result="error"} 5\n'
        'healmesh_gateway_upstream_calls_total{upstream="xgboost_canary",result="overloaded"} 7\n'
        'healmesh_gateway_upstream_calls_total{upstream="xgboost_stable",result="error"} 9\n')
    stats = evidence.upstream_stats(before, after, "xgboost_canary")
    assert (stats.calls, stats.failures) == (35, 5)  # overload says nothing about the model


# --- issue 8, item 7: counter resets ---------------------------------------------------------

def _calls(ok: float, err: float, upstream: str = "xgboost_canary") -> dict:
    return {(canary.CALLS, frozenset({("upstream", upstream), ("result", "ok")})): ok,
            (canary.CALLS, frozenset({("upstream", upstream), ("result", "error")})): err}


def test_a_gateway_restart_counts_the_new_instance_from_zero_and_fails_the_canary():
    from healmesh.policies.evidence import CounterEvidence, ResetKind, Scrape

    ev = CounterEvidence(stage_started_at=1_000.0)
    assert ev.add(Scrape({"a1": 900.0}, _calls(100, 60))) == ()  # the baseline
    resets = ev.add(Scrape({"b2": 1_010.0}, _calls(400, 50)))  # restarted during the stage
    assert [r.kind for r in resets] == [ResetKind.NEW_INSTANCE] and "b2" in resets[0].detail
    stats = canary.stats_from_increases(ev.totals, "xgboost_canary")
    assert (stats.calls, stats.failures) == (450, 50)
    verdict = analyse(stats, UpstreamStats(calls=2_000, failures=0, p95_s=0.02, p50_s=0.01), 12, CFG)
    assert verdict.status == "fail" and "error_rate (error rate): canary - stable = +0.111" in verdict.reasons[0]
    assert ev.resets == resets


def test_two_scrapes_with_a_drop_never_give_a_negative_delta():
    # the numbers without instance ids: the old code read -10 errors in 290 calls (-3.4 %)
    stats = evidence.upstream_stats(_calls(100, 60), _calls(400, 50), "xgboost_canary")
    assert stats.failures == 50 and stats.calls == 350  # the dropped series restarted from 0
    with pytest.raises(ValueError, match="0 <= failures <= calls"):
        UpstreamStats(calls=290, failures=-10, p95_s=None)


def test_sources_keep_their_baselines_and_worker_churn_is_not_a_restart():
    from healmesh.policies.evidence import CounterEvidence, Scrape

    ev = CounterEvidence(stage_started_at=1_000.0)
    ev.add(Scrape({"a1": 900.0, "a2": 900.0}, _calls(100, 0)))
    ev.add(Scrape({"c1": 950.0}, _calls(5_000, 5)))  # another server, up before the stage: a baseline
    ev.add(Scrape({"a1": 900.0, "a3": 1_020.0}, _calls(130, 1)))  # a2 replaced inside server a
    assert ev.add(Scrape({"c1": 950.0}, _calls(5_010, 5))) == ()
    stats = canary.stats_from_increases(ev.totals, "xgboost_canary")
    assert (stats.calls, stats.failures) == (30 + 1 + 10, 1)


def test_evidence_parses_instances_from_the_exposition_text():
    from healmesh.policies.evidence import Scrape

    text = ('healmesh_gateway_instance_start_time_seconds{instance_id="0123456789abcdef"} 1.7e9\n'
            'healmesh_gateway_upstream_calls_total{upstream="xgboost_canary",result="ok"} 7\n'
            'healmesh_gateway_weight{variant="pytorch"} 0.2\n')
    scrape = Scrape.parse(text)
    assert scrape.instances == {"0123456789abcdef": 1.7e9}
    assert list(scrape.samples.values()) == [7.0]  # gauges are not evidence


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.floats(0, 2_000), st.integers(0, 500),
                          st.integers(0, 500)), min_size=1, max_size=12))
def test_evidence_is_never_negative_whatever_the_scrapes(scrapes):
    from healmesh.policies.evidence import CounterEvidence, Scrape

    ev = CounterEvidence(stage_started_at=1_000.0)
    for instance, started, ok, err in scrapes:
        ev.add(Scrape({instance: started}, _calls(ok, err)))
        assert all(v >= 0 for v in ev.totals.values())
        canary.stats_from_increases(ev.totals, "xgboost_canary")  # valid stats, or it raises
