"""``rollout.run_stage`` on an injected clock: a scripted gateway (its metrics grow by what each
check-interval served) and the real lease, events and feature log in Redis (the session's
redis-server, a key prefix per test). A stage of minutes runs in a fraction of a second."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis

from healmesh.control import events
from healmesh.control.lease import LeaseStore
from healmesh.lifecycle.rollout import LeaseLost, RolloutFailed, run_stage
from healmesh.policies.canary import CanaryConfig
from healmesh.policies.rollout import STAGE_FAILED, Lease
from healmesh.policies.sequential import JudgeConfig
from healmesh.settings import RolloutConfig, Settings

pytestmark = pytest.mark.integration
HOLDER = "canary_rollout/test-run"
# error rate and latency (the scripted gateway logs no answers, so no quality evidence)
CFG = CanaryConfig(check_every_s=5, judge=JudgeConfig(require_quality=False, min_pass_samples=100, max_stage_s=180))


class Clock:
    """Monotonic and wall time that move only when the stage sleeps."""

    def __init__(self) -> None:
        self.t = 1_000.0
        self.sleeps: list[float] = []

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.t += s

    def monotonic(self) -> float:
        return self.t

    def wall(self) -> float:
        return 1_700_000_000.0 + self.t


BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1.0, float("inf"))


class Gateway:
    """The mesh as the stage sees it. Each check interval the canary and stable serve
    ``per_check`` calls each (the canary failing ``canary_errors`` of them; the stable answering in
    10 ms, the canary in ``canary_latency``); ``restart_at`` (a check number) restarts the gateway:
    a new instance whose counters start from 0."""

    def __init__(self, clock: Clock, *, per_check: int = 30, canary_errors: int = 0, canary_latency: float = 0.01,
                 restart_at: int | None = None, on_check: Any = None) -> None:
        self.clock, self.per_check, self.canary_errors = clock, per_check, canary_errors
        self.canary_latency, self.restart_at, self.on_check = canary_latency, restart_at, on_check
        self.checks = 0
        self.instance, self.started = "w1", clock.wall() - 500
        self.calls: dict[tuple[str, str], int] = {}
        self.buckets: dict[tuple[str, float], int] = {}
        self.slot = "7"
        self.rollouts: list[tuple[int, str | None, str]] = []

    def set_rollout(self, stage: int, canary_version: str | None, status: str, why: str, note: str = "") -> None:
        self.rollouts.append((stage, canary_version, status))

    def _serve(self, upstream: str, ok: int, errors: int, latency: float) -> None:
        for result, n in (("ok", ok), ("error", errors)):
            self.calls[upstream, result] = self.calls.get((upstream, result), 0) + n
        for le in BUCKETS:
            self.buckets[upstream, le] = self.buckets.get((upstream, le), 0) + (ok + errors if latency <= le else 0)

    def gateway_metrics(self) -> str:
        if self.on_check:
            self.on_check(self.checks)
        if self.checks == self.restart_at:
            self.instance, self.started = "w2", self.clock.wall()
            self.calls, self.buckets = {}, {}
        if self.checks > 0:  # the first scrape is the stage's baseline
            self._serve("xgboost_canary", self.per_check - self.canary_errors, self.canary_errors,
                        self.canary_latency)
            self._serve("xgboost_stable", self.per_check, 0, 0.01)
        self.checks += 1
        lines = [f'healmesh_gateway_instance_start_time_seconds{{instance_id="{self.instance}"}} {self.started}']
        lines += [f'healmesh_gateway_upstream_calls_total{{upstream="{u}",result="{r}"}} {n}'
                  for (u, r), n in self.calls.items()]
        lines += [f'healmesh_gateway_upstream_latency_seconds_bucket{{upstream="{u}",'
                  f'le="{"+Inf" if le == float("inf") else le}"}} {n}'
                  for (u, le), n in self.buckets.items()]
        return "\n".join(lines) + "\n"

    def gateway_state(self) -> dict[str, Any]:
        return {"breakers": {"xgboost_canary": {"state": "closed"}, "xgboost_stable": {"state": "closed"}}}

    def xgboost_slots(self) -> dict[str, Any]:
        return {"canary": {"version": self.slot}, "stable": {"version": "6"}}


@pytest.fixture
def stage(redis_srv):
    prefix = f"hm-stage-{uuid.uuid4().hex[:8]}"
    r = redis.Redis(port=redis_srv.port)
    settings = Settings(key_prefix=prefix, rollout=RolloutConfig(lease_ttl_s=60))
    assert LeaseStore(r, prefix).acquire(Lease(HOLDER, "7", 0.0), 60).holder == HOLDER
    clock = Clock()

    def run(gateway: Gateway, stage_pct: int = 10) -> dict[str, Any]:
        # no registry here: the versions have no calibrator (nor answers to estimate from)
        return run_stage(settings, gateway, r, "7", stage_pct, CFG, holder=HOLDER, sleep=clock.sleep,
                         clock=clock.monotonic, wall=clock.wall, calibrator=lambda version: None)

    yield run, clock, r, prefix
    r.close()


def kinds(r: redis.Redis, prefix: str) -> list[str]:
    return [e["kind"] for e in events.recent(r, prefix, 50)]


def test_a_healthy_canary_passes_once_the_judge_has_seen_enough(stage):
    run, clock, r, prefix = stage
    gw = Gateway(clock, per_check=30)
    details = run(gw)
    assert gw.rollouts == [(10, "7", "running")]
    assert details["status"] == "pass" and details["judge"]["outcome"] == "pass"
    # every check counted, none lost: the canary's calls are the checks' sum, past the pass sample
    checks = len(clock.sleeps)
    assert clock.sleeps == [5] * checks and details["canary"]["calls"] == 30 * checks >= 100
    # 0 errors in both: the error rate's sequence needs a few hundred calls to prove "< +1 %"
    assert details["judge"]["metrics"]["error_rate"]["upper"] < 0.01
    assert kinds(r, prefix)[0] == "stage_passed"
    passed = [e for e in events.recent(r, prefix, 5) if e["kind"] == "stage_passed"][0]
    assert passed["data"]["stable"]["sums"]["calls"] == 30 * checks  # what the next stages pool
    # the event says what every metric showed, not only the first
    assert "error rate +0 [" in passed["message"] and "log latency +0 [" in passed["message"], passed["message"]


def test_a_failing_canary_is_rolled_back_within_a_few_checks(stage):
    run, clock, r, prefix = stage
    with pytest.raises(RolloutFailed, match="error_rate"):
        run(Gateway(clock, per_check=30, canary_errors=6))  # 20 % errors
    assert len(clock.sleeps) <= 4  # harm is proven on about 100 calls, not at the stage's limit
    assert kinds(r, prefix)[0] == STAGE_FAILED


def test_a_slow_canary_is_rolled_back_on_latency_at_the_first_check(stage):
    run, clock, _, _ = stage
    with pytest.raises(RolloutFailed, match="latency"):
        run(Gateway(clock, per_check=30, canary_latency=0.5))
    assert len(clock.sleeps) == 1  # 50x slower on 30 calls is proven at once


def test_too_little_evidence_by_the_stage_limit_is_a_rollback(stage):
    run, clock, _, _ = stage
    with pytest.raises(RolloutFailed, match="too little evidence: 180s reached the stage limit"):
        run(Gateway(clock, per_check=2))
    assert sum(clock.sleeps) == 180


def test_a_lost_lease_stops_the_stage_at_the_next_check(stage):
    run, clock, r, prefix = stage
    gw = Gateway(clock, on_check=lambda n: n == 3 and LeaseStore(r, prefix).break_())
    with pytest.raises(LeaseLost, match="lease is gone"):
        run(gw)
    assert len(clock.sleeps) == 3 and kinds(r, prefix)[0] == STAGE_FAILED


def test_a_canary_slot_that_changes_mid_stage_fails_it(stage):
    run, clock, r, prefix = stage
    gw = Gateway(clock)
    gw.on_check = lambda n: n == 2 and setattr(gw, "slot", "8")
    with pytest.raises(RolloutFailed, match="serves v8, not v7"):
        run(gw)
    assert kinds(r, prefix)[0] == STAGE_FAILED


def test_a_gateway_restart_mid_stage_is_recorded_and_its_counts_still_count(stage):
    run, clock, r, prefix = stage
    details = run(Gateway(clock, per_check=30, restart_at=4))
    assert details["status"] == "pass" and details["resets"], details
    # the restarted gateway's calls add on, none lost or negative
    assert details["canary"]["calls"] == 30 * len(clock.sleeps)
    assert "counters_reset" in kinds(r, prefix)
