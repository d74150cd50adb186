"""The fallback chain of one request, as a plan: which call goes out next and with what
timeout, decided in plain code; the caller does the I/O and reports each outcome.

The chain: a weighted variant (a half-open breaker waiting for its probe first, else the
routing point over the weights after breakers) -> on error, timeout or overload one retry on
the next variant, if the deadline and the retry budget allow -> the fallback scorer -> the
gateway's own rules. Every call keeps ``fallback_reserve_s`` of the deadline for the fallback
scorer, which may then use all that is left.

Load is not a fault: a variant past its concurrency limit (``healmesh.policies.concurrency``,
asked before the call; it costs no call and no retry token) or one answering "overloaded" sends
the request to the next variant, but when the variants were left for load alone the request is
shed (``StepKind.SHED``: 503 at once, with Retry-After). The fallback scorer and the rules are
for faults, not overflow capacity: used as overflow they would answer a surge with the weakest
model, and a cheap answer under load invites more load.

The plan holds the breaker ``Permit`` of the step in progress: ``record`` releases it, and so
does ``close`` (or leaving the ``with`` block) when the caller gives up half-way (an exception,
a cancelled request), so a half-open breaker's probe slot cannot leak.

The order matters: the breaker's slot is taken before the retry budget is asked, so a variant
whose breaker refuses costs no retry token (spending it first emptied the budget on calls that
never went out). No I/O: the clock is injected; the breakers and the budget keep their own.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType

from pydantic import BaseModel, ConfigDict, model_validator

from healmesh.errors import IllegalTransition
from healmesh.policies import routing
from healmesh.policies.breaker import CircuitBreaker, Permit
from healmesh.policies.concurrency import ConcurrencyLimit
from healmesh.policies.retry_budget import RetryBudget

MIN_ATTEMPT_S = 0.005  # a call with less time than this left is not worth sending
MAX_CALLS = 2  # to the weighted variants: the first choice and one retry
LIMITED = "limited"  # the outcome of a variant refused by its concurrency limit (no call went out)
OVERLOADED = "overloaded"  # a variant answered busy (503/429)
LOAD_OUTCOMES = frozenset({LIMITED, OVERLOADED})
# outcomes that say nothing of the variant's latency under load: not fed to its limit
_NO_SAMPLE = frozenset({LIMITED})
DROPPED = frozenset({OVERLOADED, "timeout"})  # a limit's sign of too much load: cut at once


class StepKind(enum.StrEnum):
    VARIANT = "variant"  # call a weighted variant
    FALLBACK = "fallback"  # call the fallback scorer
    RULES = "rules"  # answer with the gateway's own rules: the last resort, no call
    SHED = "shed"  # every variant was busy: refuse the request at once (503 + Retry-After), no call


class RetryDecision(enum.StrEnum):
    """The ``decision`` label of the retries metric."""

    ALLOWED = "allowed"
    DENIED_DEADLINE = "denied_deadline"
    DENIED_BUDGET = "denied_budget"


class ChainConfig(BaseModel):
    """Frozen and validated; it is also ``Settings.chain`` (env ``HEALMESH_CHAIN__<FIELD>``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    deadline_s: float = 0.8  # the whole request
    attempt_timeout_s: float = 0.5  # one call to a variant
    fallback_reserve_s: float = 0.1  # kept back from the variants for the fallback scorer
    min_attempt_s: float = MIN_ATTEMPT_S

    @model_validator(mode="after")
    def _check(self) -> ChainConfig:
        for what, value in (("deadline_s", self.deadline_s), ("attempt_timeout_s", self.attempt_timeout_s)):
            if not value > 0:
                raise ValueError(f"{what} must be > 0, but was {value!r}")
        if not self.fallback_reserve_s >= 0:
            raise ValueError(f"fallback_reserve_s must be >= 0, but was {self.fallback_reserve_s!r}")
        if not self.min_attempt_s >= 0:
            raise ValueError(f"min_attempt_s must be >= 0, but was {self.min_attempt_s!r}")
        return self


@dataclass(frozen=True)
class Step:
    kind: StepKind
    upstream: str  # a variant, ``routing.FALLBACK`` or ``routing.RULES``
    timeout_s: float = 0.0  # for a call: how long it may take


@dataclass(frozen=True)
class Attempt:
    """One call that went out, and what the caller saw."""

    upstream: str
    outcome: str
    ok: bool
    seconds: float = 0.0


class _Phase(enum.Enum):
    VARIANTS = "variants"
    FALLBACK = "fallback"
    RULES = "rules"
    SHED = "shed"
    ANSWERED = "answered"
    CLOSED = "closed"


class ChainPlan:
    """One request's way through the chain. Use it as ``with plan: ...``:

    ``next_step()`` -> the caller makes that call -> ``record(outcome, ok=...)``, until a call
    answers (``answered_by``) or the step is ``StepKind.RULES``.

    Creating a plan counts the request in the retry budget."""

    def __init__(self, config: ChainConfig, breakers: Mapping[str, CircuitBreaker], budget: RetryBudget,
                 weights: routing.Weights, point: float, *, started_at: float | None = None,
                 limits: Mapping[str, ConcurrencyLimit] | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        """``weights``: the configured routing weights; ``point``: the routing point in [0, 1)
        (an entity key's, or random); ``breakers``: one per variant and ``routing.FALLBACK``;
        ``limits``: a concurrency limit per variant (none: unlimited). The plan holds a
        variant's limit slot from its step to ``record`` (or ``close``), and feeds it the time
        in between (queueing in the gateway included: that is the latency a limit must see)."""
        self.config = config
        self._breakers = breakers
        self._limits = limits or {}
        self._budget = budget
        self._clock = clock
        self.deadline = (clock() if started_at is None else started_at) + config.deadline_s
        # weights after breakers, read once: the failover order of this request
        self.weights = routing.effective(weights, {v: breakers[v].capacity() for v in routing.VARIANTS})
        self._candidate = routing.probe_first(weights, (v for v in routing.VARIANTS if breakers[v].wants_probe())) \
            or routing.choose(self.weights, point)
        self._tried: list[str] = []
        self._calls = 0  # calls to variants that went out
        self._phase = _Phase.VARIANTS
        self._pending: tuple[Step, Permit] | None = None
        self._slot: tuple[ConcurrencyLimit, float] | None = None  # (limit, taken at) of the pending step
        self._busy = 0  # variants left for load (limited or overloaded)
        self._faults = 0  # variants left for a fault (error, timeout, unreachable)
        self._shed = False
        self.retry_after_s: float | None = None  # a limit's advice when it refused (None: the caller's default)
        self.answered_by: Step | None = None
        self.attempts: list[Attempt] = []
        self.retries: list[RetryDecision] = []
        budget.record_request()

    # --- the protocol --------------------------------------------------------------------
    def next_step(self) -> Step:
        """The next thing to do. For a call, the plan now holds its breaker slot until
        ``record`` (or ``close``)."""
        if self._pending is not None:
            raise IllegalTransition(f"record the outcome of the call to {self._pending[0].upstream} first")
        if self._phase in (_Phase.ANSWERED, _Phase.CLOSED):
            raise IllegalTransition(f"the plan is {self._phase.value}")
        if self._phase is _Phase.VARIANTS:
            step = self._variant_step()
            if step is not None:
                return step
            self._phase = _Phase.FALLBACK
            if self._busy and not self._faults:  # left for load alone: shed, not overflow
                self._phase, self._shed = _Phase.SHED, True
        if self._phase is _Phase.SHED:
            return Step(StepKind.SHED, routing.RULES)
        if self._phase is _Phase.FALLBACK:
            self._phase = _Phase.RULES  # the fallback scorer gets one call at most
            remaining = self.deadline - self._clock()
            permit = self._breakers[routing.FALLBACK].acquire() if remaining >= self.config.min_attempt_s else None
            if permit is not None:
                return self._hold(Step(StepKind.FALLBACK, routing.FALLBACK, remaining), permit)
        return Step(StepKind.RULES, routing.RULES)

    def record(self, outcome: str, *, ok: bool, seconds: float = 0.0) -> None:
        """What the call of the last step gave; releases its breaker slot."""
        if self._pending is None:
            raise IllegalTransition("no call in progress")
        step, permit = self._pending
        self._pending = None
        permit.release()
        self._release_slot(outcome)
        self.attempts.append(Attempt(step.upstream, outcome, ok, seconds))
        if ok:
            self._phase = _Phase.ANSWERED
            self.answered_by = step
            return
        if step.kind is StepKind.VARIANT:
            self._calls += 1
            self._left_for(outcome)
            self._fail_over(step.upstream)

    def close(self) -> None:
        """Give the plan up (or end it): releases the slot of a call in progress. Idempotent."""
        if self._pending is not None:
            self._pending[1].release()
            self._pending = None
        if self._slot is not None:  # abandoned: no sample for the limit
            self._slot[0].release(None)
            self._slot = None
        if self._phase is not _Phase.ANSWERED:
            self._phase = _Phase.CLOSED

    def __enter__(self) -> ChainPlan:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # --- views ---------------------------------------------------------------------------
    @property
    def fallback(self) -> bool:
        """The answer did not come from a weighted variant."""
        return self.answered_by is None or self.answered_by.kind is not StepKind.VARIANT

    @property
    def degraded(self) -> bool:
        """The answer came from the gateway's own rules."""
        return self.answered_by is None

    @property
    def shed(self) -> bool:
        """The plan refused the request for load (its last step was ``StepKind.SHED``)."""
        return self._shed

    def attempt_pairs(self) -> list[tuple[str, str]]:
        """(upstream, outcome) of every call, in order."""
        return [(a.upstream, a.outcome) for a in self.attempts]

    # --- internals -----------------------------------------------------------------------
    def _variant_step(self) -> Step | None:
        """The next variant call, or None: on to the fallback scorer."""
        while self._candidate is not None and self._calls < MAX_CALLS:
            candidate = self._candidate
            permit = self._breakers[candidate].acquire()
            if permit is None:  # open, or half-open with its probe slots taken: costs no call, no token
                self._fail_over(candidate)
                continue
            room = self.deadline - self._clock() - self.config.fallback_reserve_s
            if self._calls >= 1:
                decision = self._retry_decision(room)
                self.retries.append(decision)
                if decision is not RetryDecision.ALLOWED:
                    permit.release()
                    return None
            timeout = min(self.config.attempt_timeout_s, room)
            if timeout < self.config.min_attempt_s:
                permit.release()
                return None
            limit = self._limits.get(candidate)
            if limit is not None:
                admission = limit.try_acquire()
                if not admission.admitted:  # no call went out: no call counted, no token spent
                    permit.release()
                    self.attempts.append(Attempt(candidate, LIMITED, False))
                    self.retry_after_s = admission.retry_after_s
                    self._left_for(LIMITED)
                    self._fail_over(candidate)
                    continue
                self._slot = (limit, self._clock())
            return self._hold(Step(StepKind.VARIANT, candidate, timeout), permit)
        return None

    def _left_for(self, outcome: str) -> None:
        if outcome in LOAD_OUTCOMES:
            self._busy += 1
        else:
            self._faults += 1

    def _release_slot(self, outcome: str) -> None:
        if self._slot is None:
            return
        limit, taken = self._slot
        self._slot = None
        sample = None if outcome in _NO_SAMPLE else self._clock() - taken
        limit.release(sample, dropped=outcome in DROPPED)

    def _retry_decision(self, room: float) -> RetryDecision:
        """The deadline first: a token is spent only for a retry that really goes out."""
        if room < self.config.min_attempt_s:
            return RetryDecision.DENIED_DEADLINE
        if not self._budget.try_spend():
            return RetryDecision.DENIED_BUDGET
        return RetryDecision.ALLOWED

    def _fail_over(self, upstream: str) -> None:
        self._tried.append(upstream)
        self._candidate = next(iter(routing.failover_candidates(self.weights, self._tried)), None)

    def _hold(self, step: Step, permit: Permit) -> Step:
        self._pending = (step, permit)
        return step
