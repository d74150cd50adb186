"""Tests healmesh.policies.probing: not ready after consecutive failed probes, not one."""

import pytest

from healmesh.policies.probing import Probe, ProbeConfig, Readiness, Verdict

LATE = Probe(False, "GET http://127.0.0.1:8080/api/v2/monitor/health timed out after 2 s")


def test_one_answer_is_ready_and_one_miss_is_probed_again():
    r = Readiness(ProbeConfig(failure_threshold=3))
    assert r.observe(LATE) is Verdict.PROBE_AGAIN
    assert r.observe(Probe(True)) is Verdict.READY and r.failures == 0 and r.reason == ""


def test_threshold_failures_in_a_row_are_not_ready_with_the_last_reason():
    r = Readiness(ProbeConfig(failure_threshold=3))
    assert [r.observe(p) for p in (Probe(False, "answered 503"), LATE, Probe(False, "connection refused"))] == [
        Verdict.PROBE_AGAIN, Verdict.PROBE_AGAIN, Verdict.NOT_READY]
    assert r.reason == "connection refused (3 failed probes in a row)"


def test_a_success_resets_the_count():
    r = Readiness(ProbeConfig(failure_threshold=2))
    assert r.observe(LATE) is Verdict.PROBE_AGAIN
    assert r.observe(Probe(True)) is Verdict.READY
    assert r.observe(LATE) is Verdict.PROBE_AGAIN  # counted from zero again


def test_config_is_validated():
    with pytest.raises(ValueError):
        ProbeConfig(failure_threshold=0)
