"""A circuit breaker per upstream: CLOSED -> OPEN -> HALF_OPEN -> CLOSED, in plain code.

- CLOSED: calls pass. It opens after ``consecutive_failures`` failures in a row, or when the
  failure rate over the last ``window_s`` seconds reaches ``failure_rate`` with at least
  ``min_calls`` calls in the window. Timeouts are failures.
- OPEN: calls are refused until ``open_wait_s`` has passed, then HALF_OPEN.
- HALF_OPEN: at most ``half_open_probes`` requests at a time go through (each holds a
  ``Permit``); ``probes_to_close`` successful calls close the breaker, any failure opens it again.
- After closing, the upstream's share of traffic comes back in steps (``ramp``): ``capacity()``
  returns the share of its weight it may take now.

Slots and verdicts are separate: a request takes a ``Permit`` (``acquire``) and releases it when
it is done, whatever happened; an upstream *call* gives one verdict (``record_success`` /
``record_failure``). The gateway coalesces requests, so one call can carry many requests: it
is charged once (measured: charging each request it carried opened the breaker on 2 failed
calls at 5 % errors). A permit belongs to one HALF_OPEN episode, so a late release cannot free
a slot of the next one.

No I/O: the clock is injected, and every transition is an event handed to the listeners.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, model_validator

from healmesh.errors import IllegalTransition
from healmesh.policies.checks import need


class State(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"

    @property
    def level(self) -> int:
        """For metrics: 0 closed, 1 half-open, 2 open."""
        return {State.CLOSED: 0, State.HALF_OPEN: 1, State.OPEN: 2}[self]


# The only legal moves.
TRANSITIONS: dict[State, frozenset[State]] = {
    State.CLOSED: frozenset({State.OPEN}),
    State.OPEN: frozenset({State.HALF_OPEN}),
    State.HALF_OPEN: frozenset({State.CLOSED, State.OPEN}),
}


class BreakerConfig(BaseModel):
    """Frozen and validated; it is also ``Settings.breaker`` (env ``HEALMESH_BREAKER__<FIELD>``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    consecutive_failures: int = 5
    failure_rate: float = 0.5
    min_calls: int = 20
    window_s: float = 10.0
    open_wait_s: float = 5.0
    half_open_probes: int = 3
    probes_to_close: int = 3
    ramp: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    ramp_step_s: float = 2.0

    @model_validator(mode="after")
    def _check(self) -> BreakerConfig:
        need(self.consecutive_failures >= 1, "consecutive_failures must be >= 1", self.consecutive_failures)
        need(0.0 < self.failure_rate <= 1.0, "failure_rate must be in (0, 1]", self.failure_rate)
        need(self.min_calls >= 1, "min_calls must be >= 1", self.min_calls)
        need(self.window_s > 0, "window_s must be > 0", self.window_s)
        need(self.open_wait_s > 0, "open_wait_s must be > 0", self.open_wait_s)
        need(self.half_open_probes >= 1, "half_open_probes must be >= 1", self.half_open_probes)
        need(self.probes_to_close >= 1, "probes_to_close must be >= 1", self.probes_to_close)
        need(len(self.ramp) >= 1 and self.ramp[-1] == 1.0 and all(0 < r <= 1 for r in self.ramp)
             and list(self.ramp) == sorted(self.ramp), "ramp must rise to 1.0 in (0, 1] steps", self.ramp)
        need(self.ramp_step_s > 0, "ramp_step_s must be > 0", self.ramp_step_s)
        return self


@dataclass(frozen=True)
class Transition:
    upstream: str
    from_state: State
    to_state: State
    reason: str
    at: float  # clock time


Listener = Callable[[Transition], None]


@dataclass
class Permit:
    """A request's slot at one breaker. ``release`` is idempotent."""

    breaker: CircuitBreaker
    epoch: int  # the breaker's transition count when taken
    probe: bool  # taken in HALF_OPEN: holds one of the probe slots
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.breaker._release(self)


@dataclass
class _Window:
    """Outcomes of the last ``window_s`` seconds: (time, failed)."""

    window_s: float
    events: deque[tuple[float, bool]] = field(default_factory=deque)
    failures: int = 0

    def add(self, now: float, failed: bool) -> None:
        self.events.append((now, failed))
        self.failures += failed
        self.trim(now)

    def trim(self, now: float) -> None:
        while self.events and self.events[0][0] <= now - self.window_s:
            _, failed = self.events.popleft()
            self.failures -= failed

    def clear(self) -> None:
        self.events.clear()
        self.failures = 0


class CircuitBreaker:
    def __init__(self, upstream: str, config: BreakerConfig | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.upstream = upstream
        self.config = config or BreakerConfig()
        self._clock = clock
        self._state = State.CLOSED
        self._since = clock()
        self._consecutive = 0
        self._window = _Window(self.config.window_s)
        self._probes_in_flight = 0
        self._probe_successes = 0
        self._closed_at: float | None = None  # start of the ramp after a recovery
        self._epoch = 0  # transitions so far: a permit from an earlier episode frees nothing
        self.listeners: list[Listener] = []

    # --- reading -------------------------------------------------------------------------
    @property
    def state(self) -> State:
        self._maybe_half_open()
        return self._state

    def allows(self) -> bool:
        """May a call go to this upstream now? (HALF_OPEN: only while probe slots are free.)"""
        state = self.state
        if state is State.CLOSED:
            return True
        if state is State.OPEN:
            return False
        return self._probes_in_flight < self.config.half_open_probes

    def wants_probe(self) -> bool:
        """HALF_OPEN with a probe slot free: the next request should go here, whatever the
        routing point says. With sticky keys and one card (a load test replaying one body), no
        request's point fell in the half-open share: the breaker stayed half-open for 4 minutes."""
        return self.state is State.HALF_OPEN and self._probes_in_flight < self.config.half_open_probes

    def capacity(self) -> float:
        """Share (0..1) of its routing weight the upstream may take now."""
        state = self.state
        if state is State.OPEN:
            return 0.0
        if state is State.HALF_OPEN:
            return self.config.ramp[0] if self._probes_in_flight < self.config.half_open_probes else 0.0
        if self._closed_at is None:
            return 1.0
        step = int((self._clock() - self._closed_at) / self.config.ramp_step_s)
        if step >= len(self.config.ramp) - 1:
            self._closed_at = None
            return 1.0
        return self.config.ramp[step + 1] if step >= 0 else self.config.ramp[0]

    # --- recording -----------------------------------------------------------------------
    def acquire(self) -> Permit | None:
        """A slot for one request, or None when the breaker refuses. Release it when done."""
        if not self.allows():
            return None
        probe = self._state is State.HALF_OPEN
        if probe:
            self._probes_in_flight += 1
        return Permit(self, self._epoch, probe)

    def record_success(self) -> None:
        """One upstream call succeeded."""
        if self._state is State.HALF_OPEN:
            self._probe_successes += 1
            if self._probe_successes >= self.config.probes_to_close:
                self._move(State.CLOSED, f"{self._probe_successes} probes succeeded")
            return
        self._consecutive = 0
        if self._state is State.CLOSED:
            self._window.add(self._clock(), False)

    def record_failure(self, reason: str = "error") -> None:
        """One upstream call failed (error, timeout, unreachable, bad answer)."""
        now = self._clock()
        if self._state is State.HALF_OPEN:
            self._move(State.OPEN, f"probe failed ({reason})")
            return
        if self._state is State.OPEN:
            return
        self._consecutive += 1
        self._window.add(now, True)
        if self._consecutive >= self.config.consecutive_failures:
            self._move(State.OPEN, f"{self._consecutive} consecutive failures ({reason})")
            return
        calls = len(self._window.events)
        if calls >= self.config.min_calls and self._window.failures / calls >= self.config.failure_rate:
            self._move(State.OPEN, f"failure rate {self._window.failures}/{calls} in {self.config.window_s:g}s")

    def record_probe(self, ok: bool, reason: str = "readyz") -> None:
        """An active health probe (/readyz). A failed probe counts like a failed call (it can
        open a CLOSED breaker and re-open a HALF_OPEN one). A good probe proves only that the
        process is up, not that its model answers: closing needs real successful calls."""
        if ok:
            return
        if self.state is State.HALF_OPEN:
            self._move(State.OPEN, f"probe failed ({reason})")
        elif self._state is State.CLOSED:
            self.record_failure(reason)

    # --- internals -----------------------------------------------------------------------
    def _release(self, permit: Permit) -> None:
        if permit.probe and permit.epoch == self._epoch and self._state is State.HALF_OPEN:
            self._probes_in_flight = max(0, self._probes_in_flight - 1)

    def _maybe_half_open(self) -> None:
        if self._state is State.OPEN and self._clock() - self._since >= self.config.open_wait_s:
            self._move(State.HALF_OPEN, f"open for {self.config.open_wait_s:g}s")

    def _move(self, to: State, reason: str) -> None:
        """The one transition helper: checks legality, resets counters, tells listeners."""
        src = self._state
        if to not in TRANSITIONS[src]:
            raise IllegalTransition(f"illegal breaker transition {src.value} -> {to.value}")
        now = self._clock()
        self._state, self._since = to, now
        self._epoch += 1
        self._consecutive = 0
        self._probe_successes = 0
        self._probes_in_flight = 0
        self._window.clear()
        self._closed_at = now if to is State.CLOSED else None
        event = Transition(self.upstream, src, to, reason, now)
        for listener in self.listeners:
            listener(event)
