import random

import pytest

from healmesh.policies import routing
from healmesh.policies.retry_budget import RetryBudget, RetryBudgetConfig
from healmesh.policies.routing import PYTORCH, XGB_CANARY, XGB_STABLE, Weights, WeightsError


def test_weights_parse_normalises_and_refuses_nonsense():
    w = Weights.parse({XGB_STABLE: 8, PYTORCH: 2})
    assert w.as_dict() == {XGB_STABLE: 0.8, XGB_CANARY: 0.0, PYTORCH: 0.2}
    with pytest.raises(WeightsError, match="unknown variant 'lightgbm'"):
        Weights.parse({"lightgbm": 1})
    with pytest.raises(WeightsError, match=r"weights.xgboost_stable must be a number in \[0, 1e\+06\], but was -1"):
        Weights.parse({XGB_STABLE: -1, PYTORCH: 1})
    for huge in (1e308, float("inf"), float("nan"), True, "1"):  # 1e308 + 1e308 is inf: all traffic to nobody
        with pytest.raises(WeightsError) as exc:
            Weights.parse({XGB_STABLE: huge, PYTORCH: 1e308})
        assert exc.value.field == "weights.xgboost_stable"
    with pytest.raises(WeightsError, match="at least one weight"):
        Weights.parse({XGB_STABLE: 0})


def test_random_choice_follows_the_weights():
    eff = routing.effective(routing.DEFAULT, {})
    rng = random.Random(3)
    picks = [routing.choose(eff, rng.random()) for _ in range(20_000)]
    assert abs(picks.count(XGB_STABLE) / 20_000 - 0.8) < 0.01
    assert XGB_CANARY not in picks


def test_sticky_keys_keep_their_variant_and_spread_like_the_weights():
    eff = routing.effective(routing.DEFAULT, {})
    keys = [f"card-{i}" for i in range(5_000)]
    first = [routing.choose(eff, routing.key_point(k)) for k in keys]
    assert first == [routing.choose(eff, routing.key_point(k)) for k in keys]
    assert abs(first.count(XGB_STABLE) / 5_000 - 0.8) < 0.03


def test_open_breaker_moves_its_share_to_the_weighted_variants():
    eff = routing.effective(routing.DEFAULT, {XGB_STABLE: 0.0})
    assert eff == {XGB_STABLE: 0.0, XGB_CANARY: 0.0, PYTORCH: 1.0}  # canary has no weight: no traffic
    ramp = routing.effective(routing.DEFAULT, {XGB_STABLE: 0.5})
    assert ramp[XGB_STABLE] == pytest.approx(0.4 / 0.6)
    nothing = routing.effective(routing.DEFAULT, {XGB_STABLE: 0.0, PYTORCH: 0.0})
    assert routing.choose(nothing, 0.3) is None


def test_failover_candidates_skip_tried_and_unusable():
    eff = {XGB_STABLE: 0.7, XGB_CANARY: 0.1, PYTORCH: 0.2}
    assert routing.failover_candidates(eff, [XGB_STABLE]) == [PYTORCH, XGB_CANARY]
    assert routing.failover_candidates({XGB_STABLE: 1.0, XGB_CANARY: 0, PYTORCH: 0}, [XGB_STABLE]) == []


class Clock:
    t = 100.0

    def __call__(self):
        return self.t


def test_retry_budget_caps_retries_at_the_ratio():
    clock = Clock()
    budget = RetryBudget(RetryBudgetConfig(ratio=0.2, window_s=10, min_per_window=0), clock=clock)
    for _ in range(100):
        budget.record_request()
    granted = sum(budget.try_spend() for _ in range(50))
    assert granted == 20
    clock.t += 11  # the window moved on
    assert not budget.try_spend()  # no requests in the window, no floor
    budget.record_request()
    floor = RetryBudget(RetryBudgetConfig(ratio=0.2, window_s=10, min_per_window=3), clock=clock)
    assert sum(floor.try_spend() for _ in range(10)) == 3


def test_a_variant_waiting_for_a_probe_comes_before_the_routing_point():
    from healmesh.policies.routing import Weights, probe_first

    configured = Weights.parse({"xgboost_stable": 0.8, "pytorch": 0.2})
    assert probe_first(configured, []) is None
    assert probe_first(configured, ["xgboost_stable"]) == "xgboost_stable"
    assert probe_first(configured, ["pytorch", "xgboost_stable"]) == "xgboost_stable"  # the order of VARIANTS
    assert probe_first(configured, ["xgboost_canary"]) is None  # no weight: never probed by traffic
