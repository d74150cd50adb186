import pytest

from healmesh.policies.breaker import TRANSITIONS, BreakerConfig, CircuitBreaker, State


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


def make(**kw):
    clock = Clock()
    events = []
    b = CircuitBreaker("up", BreakerConfig(**kw), clock=clock)
    b.listeners.append(events.append)
    return b, clock, events


def fail(b, n=1, reason="error"):
    for _ in range(n):
        permit = b.acquire()
        assert permit
        b.record_failure(reason)
        permit.release()


def ok(b, n=1):
    for _ in range(n):
        permit = b.acquire()
        assert permit
        b.record_success()
        permit.release()


def test_config_errors_read_must_be_but_was():
    with pytest.raises(ValueError, match="consecutive_failures must be >= 1, but was 0"):
        BreakerConfig(consecutive_failures=0)
    with pytest.raises(ValueError, match="ramp must rise to 1.0"):
        BreakerConfig(ramp=(0.5, 0.9))


def test_opens_after_n_consecutive_failures_not_before():
    b, _, events = make(consecutive_failures=3, min_calls=100)
    fail(b, 2)
    ok(b)  # a success resets the run
    fail(b, 2)
    assert b.state is State.CLOSED
    fail(b, 1, reason="timeout")
    assert b.state is State.OPEN and not b.allows() and b.capacity() == 0.0
    assert [(e.from_state, e.to_state) for e in events] == [(State.CLOSED, State.OPEN)]
    assert "3 consecutive failures (timeout)" in events[0].reason


def test_opens_on_failure_rate_only_with_enough_calls():
    b, clock, _ = make(consecutive_failures=100, failure_rate=0.5, min_calls=10, window_s=10)
    for _ in range(4):  # 8 calls, 50 % failed: below min_calls
        ok(b)
        fail(b)
    assert b.state is State.CLOSED
    ok(b)
    fail(b)  # 10 calls, 5 failed
    assert b.state is State.OPEN


def test_old_calls_leave_the_window():
    b, clock, _ = make(consecutive_failures=100, failure_rate=0.5, min_calls=4, window_s=10)
    fail(b)
    fail(b)
    clock.advance(11)
    ok(b)
    ok(b)
    fail(b)
    assert b.state is State.CLOSED  # 1 of 3 in the window


def test_half_open_after_wait_limits_probes_and_closes_on_successes():
    b, clock, events = make(consecutive_failures=1, open_wait_s=5, half_open_probes=2, probes_to_close=2)
    fail(b)
    clock.advance(4.9)
    assert b.state is State.OPEN
    clock.advance(0.2)
    assert b.state is State.HALF_OPEN
    assert b.acquire() and b.acquire()
    assert not b.acquire()  # both probe slots taken
    b.record_success()
    b.record_success()
    assert b.state is State.CLOSED
    assert [e.to_state for e in events] == [State.OPEN, State.HALF_OPEN, State.CLOSED]


def test_half_open_failure_reopens_and_waits_again():
    b, clock, _ = make(consecutive_failures=1, open_wait_s=5)
    fail(b)
    clock.advance(5)
    assert b.acquire()
    b.record_failure("error")
    assert b.state is State.OPEN
    clock.advance(4)
    assert b.state is State.OPEN


def test_traffic_comes_back_in_steps_after_closing():
    b, clock, _ = make(consecutive_failures=1, open_wait_s=1, probes_to_close=1, ramp=(0.25, 0.5, 1.0),
                       ramp_step_s=2)
    fail(b)
    clock.advance(1)
    assert b.capacity() == 0.25  # half-open
    ok(b)
    assert b.state is State.CLOSED
    seen = []
    for _ in range(4):
        seen.append(b.capacity())
        clock.advance(1)
    assert seen == [0.5, 0.5, 1.0, 1.0]


def test_overload_release_frees_a_probe_without_verdict():
    b, clock, _ = make(consecutive_failures=1, open_wait_s=1, half_open_probes=1)
    fail(b)
    clock.advance(1)
    permit = b.acquire()
    assert permit and not b.acquire()
    permit.release()
    assert b.state is State.HALF_OPEN and b.acquire()


def test_one_call_carrying_many_requests_is_one_verdict():
    """Coalesced requests each hold a permit, but the call they shared is charged once."""
    b, _, _ = make(consecutive_failures=2, min_calls=100)
    permits = [b.acquire() for _ in range(10)]  # ten requests, one coalesced call
    b.record_failure("error")
    for p in permits:
        p.release()
    assert b.state is State.CLOSED  # one failed call, not ten


def test_a_permit_from_an_earlier_half_open_frees_no_slot_of_the_next():
    b, clock, _ = make(consecutive_failures=1, open_wait_s=1, half_open_probes=1)
    fail(b)
    clock.advance(1)
    stale = b.acquire()  # a probe of the first half-open episode
    b.record_failure("error")  # its call failed: open again
    clock.advance(1)
    fresh = b.acquire()  # the second episode's only probe slot
    assert fresh and not b.acquire()
    stale.release()  # late: must not free the slot `fresh` holds
    assert not b.acquire()
    stale.release()  # and releasing twice changes nothing
    fresh.release()
    assert b.acquire()


def test_active_probes_feed_the_breaker():
    b, clock, _ = make(consecutive_failures=2, open_wait_s=1, probes_to_close=1)
    b.record_probe(False)
    b.record_probe(False)
    assert b.state is State.OPEN
    clock.advance(1)
    assert b.state is State.HALF_OPEN
    b.record_probe(True)  # the process is up: not enough to close
    assert b.state is State.HALF_OPEN
    b.record_probe(False)
    assert b.state is State.OPEN
    clock.advance(1)
    ok(b)  # a real call that succeeds closes it
    assert b.state is State.CLOSED


def test_transition_table_is_enforced():
    assert State.CLOSED not in TRANSITIONS[State.OPEN]
    b, _, _ = make()
    with pytest.raises(RuntimeError, match="illegal breaker transition closed -> half_open"):
        b._move(State.HALF_OPEN, "test")


def test_a_half_open_breaker_wants_a_probe_while_a_slot_is_free():
    b, clock, _ = make(consecutive_failures=1, open_wait_s=5, half_open_probes=1, probes_to_close=2)
    assert not b.wants_probe()  # closed: routing as usual
    fail(b)
    assert not b.wants_probe()  # open: nothing may go there
    clock.advance(5)
    assert b.wants_probe()
    permit = b.acquire()
    assert permit is not None and not b.wants_probe()  # its one slot is taken
    permit.release()
    b.record_success()
    assert b.wants_probe()  # one more success to close
    b.acquire().release()
    b.record_success()
    assert b.state is State.CLOSED and not b.wants_probe()
