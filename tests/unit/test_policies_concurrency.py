"""Tests healmesh.policies.concurrency: the adaptive limit rises under good latency, falls as a queue
builds or the target is missed, is cut by drops, ignores app-limited windows, and sheds shadow
calls before primary requests."""

import pytest
from pydantic import ValidationError

from healmesh.policies.concurrency import ConcurrencyLimit, Kind, LimiterConfig


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t



def cfg(**kw) -> LimiterConfig:
    """The tests' limits may fall to 4 (the serving floor is 32: see LimiterConfig.min_limit)."""
    return LimiterConfig(**{"min_limit": 4, **kw})

def drive(lim: ConcurrencyLimit, clock: Clock, windows: int, latency_s, in_flight) -> list[int]:
    """``windows`` one-second windows of 20 requests each; latency and in-flight may depend on the
    limit (a callable) to close the loop as a server would."""
    seen = []
    for _ in range(windows):
        for _ in range(20):
            clock.t += 0.05
            lat = latency_s(lim.limit) if callable(latency_s) else latency_s
            inf = in_flight(lim.limit) if callable(in_flight) else in_flight
            lim.record(lat, inf)
        seen.append(lim.limit)
    return seen


def test_the_limit_rises_while_latency_holds_and_the_server_is_busy():
    clock = Clock()
    lim = ConcurrencyLimit(cfg(initial_limit=20, max_limit=500), clock)
    seen = drive(lim, clock, 120, 0.010, lambda limit: limit)  # every slot used, 10 ms throughout
    # it probes upwards by about 0.2 x sqrt(limit) a window (smoothing x headroom)
    assert seen[-1] > 200 and seen == sorted(seen)
    assert lim.baseline_s == pytest.approx(0.010)


def test_an_idle_server_gives_no_evidence_for_a_higher_limit():
    clock = Clock()
    lim = ConcurrencyLimit(cfg(initial_limit=64), clock)
    assert drive(lim, clock, 30, 0.010, 5)[-1] == 64  # 5 in flight of 64: the traffic is the bottleneck


def test_a_queue_building_up_brings_the_limit_down_to_what_the_server_can_take():
    """A server that answers 100 requests at once in 10 ms and queues the rest: latency grows with
    the excess. The limit climbs, meets the queue, and settles near the server's capacity."""
    clock = Clock()
    lim = ConcurrencyLimit(cfg(initial_limit=50, max_limit=1000, latency_target_s=1.0), clock)

    def latency(limit: int) -> float:
        return 0.010 * max(1.0, limit / 100)

    seen = drive(lim, clock, 200, latency, lambda limit: limit)
    assert max(seen) < 400 and 80 <= seen[-1] <= 250, seen[-20:]


def test_missing_the_latency_target_brings_the_limit_down():
    clock = Clock()
    lim = ConcurrencyLimit(cfg(initial_limit=200, latency_target_s=0.1), clock)
    drive(lim, clock, 5, 0.050, 200)  # the baseline: 50 ms
    before = lim.limit
    seen = drive(lim, clock, 10, 0.300, 200)  # 300 ms: three times the target
    assert seen[-1] < before * 0.5 and seen == sorted(seen, reverse=True)


def test_a_dropped_request_cuts_the_limit_at_once_and_it_never_goes_under_the_floor():
    lim = ConcurrencyLimit(cfg(initial_limit=100, min_limit=10, backoff=0.9), Clock())
    lim.record(0.5, 100, dropped=True)
    assert lim.limit == 90
    for _ in range(100):
        lim.record(0.5, 100, dropped=True)
    assert lim.limit == 10


def test_shadow_calls_are_shed_first_and_a_shed_is_immediate_with_retry_after():
    lim = ConcurrencyLimit(cfg(initial_limit=100, shadow_share=0.5, retry_after_s=2.0), Clock())
    assert lim.admit(49, Kind.SHADOW).admitted and lim.admit(49).admitted
    shadow = lim.admit(50, Kind.SHADOW)
    assert not shadow.admitted and shadow.retry_after_s == 2.0 and "shadow share" in shadow.reason
    assert lim.admit(99).admitted  # primary traffic still fits
    shed = lim.admit(100)
    assert not shed.admitted and shed.retry_after_s == 2.0 and shed.reason == (
        "100 in flight reached the concurrency limit (100)")


def test_windows_need_their_samples_and_bad_values_are_refused():
    clock = Clock()
    lim = ConcurrencyLimit(cfg(initial_limit=64, min_window_samples=10), clock)
    for _ in range(9):
        clock.t += 1.0
        lim.record(0.5, 64)  # slow, but 9 samples are no window
    assert lim.limit == 64 and lim.baseline_s is None
    with pytest.raises(ValueError, match="latency_s must be finite"):
        lim.record(float("nan"), 1)


@pytest.mark.parametrize("bad", [{"min_limit": 0}, {"initial_limit": 2000}, {"latency_target_s": 0},
                                 {"tolerance": 0.5}, {"min_gradient": 0}, {"smoothing": 1.5},
                                 {"backoff": 1.0}, {"shadow_share": 0}, {"unknown": 1}])
def test_config_is_validated(bad):
    with pytest.raises(ValidationError):
        LimiterConfig(**bad)


def test_slots_taken_and_given_back_count_in_flight_and_feed_the_window():
    clock = Clock()
    lim = ConcurrencyLimit(cfg(initial_limit=4, min_limit=1, min_window_samples=1, backoff=0.5), clock)
    assert [lim.try_acquire(Kind.SHADOW).admitted for _ in range(3)] == [True, True, False]  # shadow share 0.5
    assert [lim.try_acquire().admitted for _ in range(3)] == [True, True, False]
    assert lim.in_flight == 4 and lim.shed == {Kind.PRIMARY: 1, Kind.SHADOW: 1}
    lim.release(None)  # abandoned: no sample, no cut
    assert lim.in_flight == 3 and lim.limit == 4 and lim.baseline_s is None
    clock.t = 1.0
    lim.release(0.01)  # a sample: the window closes with it
    assert lim.baseline_s == 0.01
    lim.release(None, dropped=True)  # a drop cuts at once
    assert lim.limit == 2 and lim.in_flight == 1
    lim.release(0.01)
    with pytest.raises(ValueError, match="without a slot"):
        lim.release(0.01)
    assert lim.describe()["shed"] == {"primary": 1, "shadow": 1}
