import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


# --- issue 8, item 7: counter resets ---------------------------------------------------------

def _calls(ok: float, err: float, upstream: str = "xgboost_canary") -> dict:
    return {(canary.CALLS, frozenset({("upstream", upstream), ("result", "ok")})): ok,
            (canary.CALLS, frozenset({("upstream", upstream), ("result", "error")})): err}


def test_a_gateway_restart_counts_the_new_instance_from_zero_and_fails_the_canary():
    from healmesh.lifecycle.evidence import CounterEvidence, ResetKind, Scrape

    ev = CounterEvidence(stage_started_at=1_000.0)
    assert ev.add(Scrape({"a1": 900.0}, _calls(100, 60))) == ()  # the baseline
    resets = ev.add(Scrape({"b2": 1_010.0}, _calls(400, 50)))  # restarted during the stage
    assert [r.kind for r in resets] == [ResetKind.NEW_INSTANCE] and "b2" in resets[0].detail
    stats = canary.stats_from_increases(ev.totals, "xgboost_canary")
    assert (stats.calls, stats.failures) == (450, 50)
    verdict = analyse(stats, UpstreamStats(calls=2_000, failures=0, p95_s=0.02, p50_s=0.01), 12, CFG)
    assert verdict.status == "fail" and "canary error rate 11.1%" in verdict.reasons[0]
    assert ev.resets == resets


def test_two_scrapes_with_a_drop_never_give_a_negative_delta():
    # the numbers without instance ids: the old code read -10 errors in 290 calls (-3.4 %)
    stats = canary.upstream_stats(_calls(100, 60), _calls(400, 50), "xgboost_canary")
    assert stats.failures == 50 and stats.calls == 350  # the dropped series restarted from 0
    with pytest.raises(ValueError, match="0 <= failures <= calls"):
        UpstreamStats(calls=290, failures=-10, p95_s=None)


def test_sources_keep_their_baselines_and_worker_churn_is_not_a_restart():
    from healmesh.lifecycle.evidence import CounterEvidence, Scrape

    ev = CounterEvidence(stage_started_at=1_000.0)
    ev.add(Scrape({"a1": 900.0, "a2": 900.0}, _calls(100, 0)))
    ev.add(Scrape({"c1": 950.0}, _calls(5_000, 5)))  # another server, up before the stage: a baseline
    ev.add(Scrape({"a1": 900.0, "a3": 1_020.0}, _calls(130, 1)))  # a2 replaced inside server a
    assert ev.add(Scrape({"c1": 950.0}, _calls(5_010, 5))) == ()
    stats = canary.stats_from_increases(ev.totals, "xgboost_canary")
    assert (stats.calls, stats.failures) == (30 + 1 + 10, 1)


def test_evidence_parses_instances_from_the_exposition_text():
    from healmesh.lifecycle.evidence import Scrape

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
    from healmesh.lifecycle.evidence import CounterEvidence, Scrape

    ev = CounterEvidence(stage_started_at=1_000.0)
    for instance, started, ok, err in scrapes:
        ev.add(Scrape({instance: started}, _calls(ok, err)))
        assert all(v >= 0 for v in ev.totals.values())
        canary.stats_from_increases(ev.totals, "xgboost_canary")  # valid stats, or it raises


# --- issue 8, item 13: drift_check_id is a report name, never a path ------------------------

@pytest.mark.parametrize("bad", ["../../etc/passwd", "/etc/passwd", "20260101T120000Z_v3/../../x",
                                 "20260101T120000Z_v..", "x", "", "20260101T120000Z_v3\n"])
def test_a_drift_check_id_must_be_a_report_name(bad):
    from healmesh.lifecycle.report_ids import BadReportId, check_report_id

    with pytest.raises(BadReportId, match="drift_check_id must be a drift report name"):
        check_report_id(bad)


def test_report_names_match_the_pattern_and_resolve_inside_the_directory(tmp_path):
    from healmesh.lifecycle.report_ids import BadReportId, report_files, report_name

    name = report_name(1_780_000_000.0, "12")
    assert name == "20260528T202640Z_v12" and report_name(0.0, None).endswith("_vnone")
    files = report_files(tmp_path, name)
    assert files["html"] == (tmp_path / f"{name}.html").resolve()
    (tmp_path / "20260101T000000Z_v1.html").symlink_to("/etc/passwd")  # a link out of the directory
    with pytest.raises(BadReportId, match="resolves outside"):
        report_files(tmp_path, "20260101T000000Z_v1")


def test_retrain_refuses_a_path_before_touching_anything(tmp_path):
    from types import SimpleNamespace

    from healmesh.lifecycle import airflow_tasks
    from healmesh.lifecycle.report_ids import BadReportId
    from healmesh.lifecycle.retrain import run_retrain

    # no registry, no Redis: the check must come before either is used
    s = Settings(mlflow_tracking_uri="http://127.0.0.1:9/", drift_reports_dir=tmp_path)
    with pytest.raises(BadReportId, match="drift_check_id .*'../../etc/passwd'"):
        run_retrain(s, None, trigger="manual", drift_check_id="../../etc/passwd")
    # an asset event's extra does not go through the DAG Param's pattern
    event = SimpleNamespace(extra={"check_id": "../secrets/admin_token"})
    with pytest.raises(BadReportId, match="drift_check_id"):
        airflow_tasks.retrain({}, {"healmesh://drift": [event]})


# --- issue 8, item 6: one rollout at a time ---------------------------------------------------

def test_a_stage_goes_on_only_with_the_lease_and_the_version_under_test_in_the_slot():
    from healmesh.lifecycle.rollout_policy import Lease, StopKind, stage_guard

    mine = Lease("canary_rollout/run-1", "4", 1_700_000_000.0)
    assert stage_guard(mine, "canary_rollout/run-1", "4", "4") is None
    gone = stage_guard(None, "canary_rollout/run-1", "4", "4")
    assert gone is not None and gone.kind is StopKind.LEASE_LOST and "aborted" in gone.reason
    other = stage_guard(Lease("canary_rollout/run-2", "5", 0.0), "canary_rollout/run-1", "4", "4")
    assert other is not None and other.kind is StopKind.LEASE_LOST and "run-2" in other.reason
    swapped = stage_guard(mine, "canary_rollout/run-1", "5", "4")
    assert swapped is not None and swapped.kind is StopKind.SLOT_CHANGED
    assert swapped.reason == "the XGBoost scorer's canary slot serves v5, not v4 under test"
    assert "serves nothing" in stage_guard(mine, "canary_rollout/run-1", None, "4").reason


def test_a_new_challenger_waits_for_the_running_rollout_then_gives_up():
    from healmesh.lifecycle.rollout_policy import ChallengerStep, Lease, challenger_step

    running = Lease("canary_rollout/run-1", "4", 0.0)
    assert challenger_step(None, 0.0, 60) is ChallengerStep.INSTALL
    assert challenger_step(None, 999.0, 60) is ChallengerStep.INSTALL
    assert challenger_step(running, 10.0, 60) is ChallengerStep.WAIT
    assert challenger_step(running, 60.0, 60) is ChallengerStep.GIVE_UP


def test_the_rollback_plan_reads_how_the_rollout_ended():
    from healmesh.gateway.control import RolloutStatus
    from healmesh.lifecycle.rollout_policy import Lease, RollbackAction, rollback_plan

    me = "canary_rollout/run-1"
    mine = Lease(me, "4", 0.0)
    stage = {"kind": "stage_failed", "message": "stage 10% failed: canary error rate 20.0%"}
    promote = {"kind": "promote_failed", "message": "promote of v4 failed (try 3): MlflowException: down"}
    aborted = {"kind": "rollout_aborted", "message": "rollout of v4 aborted by cli:ops: bad data"}
    plan = rollback_plan(me, mine, [stage])
    assert plan.action is RollbackAction.ROLL_BACK and plan.reason == stage["message"]
    plan = rollback_plan(me, mine, [promote, promote])
    assert plan.action is RollbackAction.FAIL and plan.action.status is RolloutStatus.FAILED
    assert plan.reason == promote["message"]
    assert rollback_plan(me, None, [stage, aborted]).reason == aborted["message"]
    assert "could not start" in rollback_plan(me, mine, []).reason
    left = rollback_plan(me, Lease("canary_rollout/run-2", "5", 0.0), [])
    assert left.action is RollbackAction.LEAVE and left.action.status is None and "run-2" in left.reason


def test_a_lease_survives_encoding_and_a_foreign_value_still_counts_as_held():
    from healmesh.lifecycle.rollout_policy import Lease

    lease = Lease("canary_rollout/run-1", "4", 1_700_000_000.5)
    assert Lease.decode(lease.encode().encode()) == lease
    assert Lease.decode(None) is None
    assert Lease.decode(b"someone-else").holder == "someone-else"
