import pytest

from healmesh.policies import routing
from healmesh.policies.breaker import BreakerConfig, CircuitBreaker, State
from healmesh.policies.chain import MIN_ATTEMPT_S, ChainConfig, ChainPlan, RetryDecision, StepKind
from healmesh.policies.concurrency import ConcurrencyLimit, LimiterConfig
from healmesh.policies.retry_budget import RetryBudget, RetryBudgetConfig

STABLE, CANARY, PYTORCH, FALLBACK = routing.XGB_STABLE, routing.XGB_CANARY, routing.PYTORCH, routing.FALLBACK
CONFIG = ChainConfig(deadline_s=0.8, attempt_timeout_s=0.5, fallback_reserve_s=0.1)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


class World:
    """Real breakers and a real retry budget on one fake clock."""

    def __init__(self, retries: int = 10, **breaker) -> None:
        self.clock = Clock()
        config = BreakerConfig(**{"consecutive_failures": 1, "open_wait_s": 5.0, "half_open_probes": 1,
                                  "probes_to_close": 3, **breaker})
        self.breakers = {n: CircuitBreaker(n, config, clock=self.clock) for n in (*routing.VARIANTS, FALLBACK)}
        # ratio 0: exactly ``retries`` tokens in the window, whatever the traffic
        self.budget = RetryBudget(RetryBudgetConfig(ratio=0.0, window_s=10, min_per_window=retries), clock=self.clock)

    def plan(self, weights: dict[str, float], point: float = 0.0, config: ChainConfig = CONFIG) -> ChainPlan:
        return ChainPlan(config, self.breakers, self.budget, routing.Weights.parse(weights), point, clock=self.clock)

    def open(self, name: str) -> None:
        self.breakers[name].record_failure("test")
        assert self.breakers[name].state is State.OPEN

    def half_open(self, name: str) -> None:
        self.open(name)
        self.clock.advance(5.0)
        assert self.breakers[name].state is State.HALF_OPEN

    def probe_slot_free(self, name: str) -> bool:
        b = self.breakers[name]
        return b.wants_probe() and b.capacity() > 0

    def tokens_left(self) -> int:
        n = 0
        while self.budget.try_spend():
            n += 1
        return n


def test_first_choice_answers():
    w = World()
    with w.plan({STABLE: 0.8, PYTORCH: 0.2}, point=0.5) as plan:
        step = plan.next_step()
        assert (step.kind, step.upstream, step.timeout_s) == (StepKind.VARIANT, STABLE, 0.5)
        w.clock.advance(0.02)
        plan.record("ok", ok=True, seconds=0.02)
    assert plan.answered_by == step and not plan.fallback and not plan.degraded
    assert plan.attempt_pairs() == [(STABLE, "ok")] and plan.retries == []
    with pytest.raises(RuntimeError, match="answered"):
        plan.next_step()


def test_the_routing_point_chooses_and_a_half_open_variant_is_probed_first():
    w = World()
    assert w.plan({STABLE: 0.8, PYTORCH: 0.2}, point=0.9).next_step().upstream == PYTORCH
    w.half_open(PYTORCH)  # a sticky key whose point lies in the stable share still goes to the probe
    assert w.plan({STABLE: 0.8, PYTORCH: 0.2}, point=0.1).next_step().upstream == PYTORCH


def test_failover_after_an_error_is_the_one_retry_within_what_is_left():
    w = World()
    with w.plan({STABLE: 0.5, CANARY: 0.3, PYTORCH: 0.2}, point=0.1) as plan:
        assert plan.next_step().upstream == STABLE
        w.clock.advance(0.3)
        plan.record("error", ok=False)
        retry = plan.next_step()
        # the largest share left; the time left less the fallback reserve
        assert (retry.kind, retry.upstream) == (StepKind.VARIANT, CANARY)
        assert retry.timeout_s == pytest.approx(0.8 - 0.3 - 0.1)
        w.clock.advance(0.1)
        plan.record("timeout", ok=False)
        step = plan.next_step()  # one retry only: pytorch is not tried, the fallback scorer is
        assert (step.kind, step.upstream) == (StepKind.FALLBACK, FALLBACK)
        assert step.timeout_s == pytest.approx(0.8 - 0.4)  # the fallback scorer may use all that is left
        plan.record("ok", ok=True)
    assert plan.retries == [RetryDecision.ALLOWED]
    assert plan.attempt_pairs() == [(STABLE, "error"), (CANARY, "timeout"), (FALLBACK, "ok")]
    assert plan.fallback and not plan.degraded
    assert w.tokens_left() == 9


def test_an_overloaded_variant_fails_over_too():
    w = World()
    with w.plan({STABLE: 0.8, PYTORCH: 0.2}) as plan:
        plan.next_step()
        plan.record("overloaded", ok=False)
        assert plan.next_step().upstream == PYTORCH


def test_an_empty_retry_budget_means_no_second_call_but_the_fallback_scorer():
    w = World(retries=0)
    with w.plan({STABLE: 0.8, PYTORCH: 0.2}) as plan:
        plan.next_step()
        plan.record("error", ok=False)
        step = plan.next_step()
        assert step.kind is StepKind.FALLBACK
        plan.record("error", ok=False)
        assert plan.next_step() == plan.next_step()  # the rules: asked again, still the rules
        assert plan.next_step().kind is StepKind.RULES
    assert plan.retries == [RetryDecision.DENIED_BUDGET]
    assert [a.upstream for a in plan.attempts] == [STABLE, FALLBACK]
    assert plan.degraded and plan.fallback and plan.answered_by is None


def test_too_little_time_for_a_retry_keeps_the_reserve_for_the_fallback_scorer_and_spends_no_token():
    w = World(retries=1)
    with w.plan({STABLE: 0.8, PYTORCH: 0.2}) as plan:
        plan.next_step()
        w.clock.advance(0.72)  # 0.08 left: less than the reserve
        plan.record("timeout", ok=False)
        step = plan.next_step()
        assert step.kind is StepKind.FALLBACK and step.timeout_s == pytest.approx(0.08)
    assert plan.retries == [RetryDecision.DENIED_DEADLINE]
    assert w.tokens_left() == 1  # the deadline is asked before the budget


def test_with_no_time_left_the_gateway_rules_answer_without_a_call():
    w = World()
    with w.plan({STABLE: 1.0}) as plan:
        plan.next_step()
        w.clock.advance(0.8 - MIN_ATTEMPT_S / 2)
        plan.record("timeout", ok=False)
        assert plan.next_step().kind is StepKind.RULES
    assert w.breakers[FALLBACK].acquire() is not None
    assert plan.degraded and [a.upstream for a in plan.attempts] == [STABLE]


def test_a_deadline_within_the_reserve_goes_straight_to_the_fallback_scorer():
    w = World()
    config = ChainConfig(deadline_s=0.1, attempt_timeout_s=0.5, fallback_reserve_s=0.1)
    with w.plan({STABLE: 1.0}, config=config) as plan:
        step = plan.next_step()
        assert (step.kind, step.timeout_s) == (StepKind.FALLBACK, pytest.approx(0.1))
    assert plan.retries == [] and plan.attempts == []


def test_an_open_fallback_breaker_leaves_the_rules():
    w = World(retries=0)
    w.open(FALLBACK)
    with w.plan({STABLE: 1.0}) as plan:
        plan.next_step()
        plan.record("error", ok=False)
        assert plan.next_step().kind is StepKind.RULES


def test_a_breaker_that_opened_after_routing_is_skipped_without_spending_a_call():
    w = World()
    with w.plan({STABLE: 0.5, CANARY: 0.3, PYTORCH: 0.2}, point=0.1) as plan:
        w.open(STABLE)  # another request's call failed meanwhile
        first = plan.next_step()
        assert first.upstream == CANARY and plan.retries == []  # still the first call, not a retry
        plan.record("error", ok=False)
        assert plan.next_step().upstream == PYTORCH  # so the one retry is still there
        plan.record("ok", ok=True)
    assert plan.retries == [RetryDecision.ALLOWED]
    assert plan.attempt_pairs() == [(CANARY, "error"), (PYTORCH, "ok")]


def test_a_breaker_refusing_the_retry_costs_no_budget_token():
    """The ordering bug: the budget was asked before the breaker's slot, so a refused variant
    spent the token the next variant needed. One token here: the right order gives it to pytorch."""
    w = World(retries=1)
    with w.plan({STABLE: 0.5, CANARY: 0.3, PYTORCH: 0.2}, point=0.1) as plan:
        assert plan.next_step().upstream == STABLE
        w.open(CANARY)  # while the first call was in flight
        plan.record("error", ok=False)
        step = plan.next_step()
        assert step.upstream == PYTORCH
    assert plan.retries == [RetryDecision.ALLOWED]
    assert w.tokens_left() == 0


def test_no_variant_left_to_retry_keeps_the_token():
    w = World(retries=1)
    with w.plan({STABLE: 0.8, PYTORCH: 0.2}) as plan:
        plan.next_step()
        w.open(PYTORCH)
        plan.record("error", ok=False)
        assert plan.next_step().kind is StepKind.FALLBACK
    assert plan.retries == [] and w.tokens_left() == 1


# --- the probe slot of a half-open breaker comes back on every path -------------------------

@pytest.mark.parametrize("ok,outcome", [(True, "ok"), (False, "overloaded")])
def test_the_probe_slot_comes_back_when_the_outcome_is_recorded(ok, outcome):
    w = World()
    w.half_open(PYTORCH)
    with w.plan({STABLE: 0.8, PYTORCH: 0.2}) as plan:
        assert plan.next_step().upstream == PYTORCH
        assert not w.probe_slot_free(PYTORCH) and w.breakers[PYTORCH].acquire() is None
        if ok:
            w.breakers[PYTORCH].record_success()  # the call's verdict (1 of 3 to close)
        plan.record(outcome, ok=ok)
        assert w.probe_slot_free(PYTORCH)


def test_the_probe_slot_of_a_failed_probe_belongs_to_the_old_episode():
    w = World()
    w.half_open(PYTORCH)
    with w.plan({STABLE: 0.8, PYTORCH: 0.2}) as plan:
        plan.next_step()
        w.breakers[PYTORCH].record_failure("error")  # the call's verdict: open again
        plan.record("error", ok=False)
        assert plan.next_step().upstream == STABLE
        plan.record("ok", ok=True)
    w.clock.advance(5.0)
    assert w.probe_slot_free(PYTORCH)  # the next half-open episode starts with its slot free


def test_the_probe_slot_comes_back_when_the_plan_is_abandoned():
    w = World()
    w.half_open(PYTORCH)
    plan = w.plan({STABLE: 0.8, PYTORCH: 0.2})
    plan.next_step()
    assert not w.probe_slot_free(PYTORCH)
    plan.close()  # a cancelled request
    assert w.probe_slot_free(PYTORCH)
    plan.close()
    with pytest.raises(RuntimeError, match="closed"):
        plan.next_step()


def test_the_probe_slot_comes_back_when_the_call_raises():
    w = World()
    w.half_open(PYTORCH)
    with pytest.raises(ConnectionError), w.plan({STABLE: 0.8, PYTORCH: 0.2}) as plan:
        plan.next_step()
        raise ConnectionError("the transport blew up")
    assert w.probe_slot_free(PYTORCH)


def test_the_probe_slot_comes_back_when_the_retry_is_denied():
    w = World(retries=0)
    w.half_open(STABLE)
    w.half_open(PYTORCH)
    with w.plan({STABLE: 0.8, PYTORCH: 0.2}) as plan:
        assert plan.next_step().upstream == STABLE  # both wait for a probe: the first configured
        plan.record("error", ok=False)
        assert plan.next_step().kind is StepKind.FALLBACK  # pytorch's slot taken, then the budget said no
    assert plan.retries == [RetryDecision.DENIED_BUDGET]
    assert w.probe_slot_free(STABLE) and w.probe_slot_free(PYTORCH)


def test_the_fallback_scorer_probe_slot_comes_back_too():
    w = World(retries=0)
    w.half_open(FALLBACK)
    with pytest.raises(TimeoutError), w.plan({STABLE: 1.0}) as plan:
        plan.next_step()
        plan.record("error", ok=False)
        assert plan.next_step().kind is StepKind.FALLBACK
        assert not w.probe_slot_free(FALLBACK)
        raise TimeoutError
    assert w.probe_slot_free(FALLBACK)


def test_the_protocol_is_enforced():
    w = World()
    with w.plan({STABLE: 1.0}) as plan:
        with pytest.raises(RuntimeError, match="no call in progress"):
            plan.record("ok", ok=True)
        plan.next_step()
        with pytest.raises(RuntimeError, match="record the outcome"):
            plan.next_step()


def test_a_plan_counts_its_request_in_the_budget():
    w = World()
    w.budget = RetryBudget(RetryBudgetConfig(ratio=0.5, window_s=10, min_per_window=0), clock=w.clock)
    assert not w.budget.try_spend()
    for _ in range(4):
        w.plan({STABLE: 1.0}).close()
    assert w.tokens_left() == 2


def test_config_errors_read_must_be_but_was():
    with pytest.raises(ValueError, match="deadline_s must be > 0, but was 0"):
        ChainConfig(deadline_s=0)
    with pytest.raises(ValueError, match="fallback_reserve_s must be >= 0"):
        ChainConfig(fallback_reserve_s=-1)


# --- load is not a fault: limits, overload and shedding (issue 12) ------------------------------

def limits(clock: Clock, **caps: int) -> dict[str, ConcurrencyLimit]:
    config = LimiterConfig(initial_limit=1, min_limit=1, max_limit=8, retry_after_s=2.0)
    out = {n: ConcurrencyLimit(config, clock=clock) for n in routing.VARIANTS}
    for name, taken in caps.items():
        for _ in range(taken):
            assert out[name].try_acquire().admitted
    return out


def test_a_variant_past_its_limit_costs_no_call_and_no_token_and_the_next_variant_answers():
    w = World(retries=0)
    held = limits(w.clock, **{STABLE: 1})
    with ChainPlan(CONFIG, w.breakers, w.budget, routing.Weights.parse({STABLE: 0.8, PYTORCH: 0.2}), 0.0,
                   limits=held, clock=w.clock) as plan:
        step = plan.next_step()
        assert step.upstream == PYTORCH and held[PYTORCH].in_flight == 1  # stable was full: no retry token needed
        w.clock.advance(0.02)
        plan.record("ok", ok=True)
    assert held[PYTORCH].in_flight == 0 and held[STABLE].shed["primary"] == 1
    assert plan.attempt_pairs() == [(STABLE, "limited"), (PYTORCH, "ok")] and not plan.shed


def test_every_variant_busy_sheds_instead_of_using_the_fallback_as_overflow():
    w = World()
    held = limits(w.clock, **{STABLE: 1, PYTORCH: 1})
    with ChainPlan(CONFIG, w.breakers, w.budget, routing.Weights.parse({STABLE: 0.8, PYTORCH: 0.2}), 0.0,
                   limits=held, clock=w.clock) as plan:
        step = plan.next_step()
        assert step.kind is StepKind.SHED and plan.next_step().kind is StepKind.SHED
    assert plan.shed and plan.retry_after_s == 2.0 and plan.fallback
    assert plan.attempts[-1].upstream == PYTORCH and w.tokens_left() == 10  # no call, no token spent


def test_overloaded_answers_shed_too_but_a_fault_still_goes_to_the_fallback_scorer():
    w = World()
    with w.plan({STABLE: 0.8, PYTORCH: 0.2}) as plan:
        plan.next_step()
        plan.record("overloaded", ok=False)
        assert plan.next_step().upstream == PYTORCH  # load is shed to another variant first
        plan.record("overloaded", ok=False)
        assert plan.next_step().kind is StepKind.SHED and plan.retry_after_s is None
    w = World()
    with w.plan({STABLE: 0.8, PYTORCH: 0.2}) as plan:
        plan.next_step()
        plan.record("error", ok=False)
        assert plan.next_step().upstream == PYTORCH
        plan.record("overloaded", ok=False)
        assert plan.next_step().kind is StepKind.FALLBACK  # a fault was seen: the fallback chain goes on
    assert not plan.shed


def test_the_limit_hears_the_calls_latency_and_an_abandoned_call_gives_its_slot_back():
    w = World()
    held = limits(w.clock)
    with pytest.raises(TimeoutError), ChainPlan(
            CONFIG, w.breakers, w.budget, routing.Weights.parse({STABLE: 1.0}), 0.0, limits=held,
            clock=w.clock) as plan:
        assert plan.next_step().upstream == STABLE and held[STABLE].in_flight == 1
        raise TimeoutError
    assert held[STABLE].in_flight == 0
    limit = ConcurrencyLimit(LimiterConfig(initial_limit=4, min_limit=1, backoff=0.5), clock=w.clock)
    with ChainPlan(CONFIG, w.breakers, w.budget, routing.Weights.parse({STABLE: 1.0}), 0.0,
                   limits={STABLE: limit}, clock=w.clock) as plan:
        plan.next_step()
        plan.record("timeout", ok=False)  # a timed-out call is a drop: the limit is cut at once
    assert limit.limit == 2 and limit.in_flight == 0
