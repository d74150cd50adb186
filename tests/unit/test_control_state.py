"""Tests healmesh.control.state: the rules a control-state change must pass (pure; the store applies them
inside its compare-and-set, on the state it read), the weights of a rollout stage, tolerant parsing,
and a poll's read that must not undo this worker's own change."""

import pytest

from healmesh.control.state import (
    ChangeConflict,
    ControlState,
    Rollout,
    RolloutConflict,
    RolloutRejected,
    RolloutStatus,
    Shadow,
    apply_change,
    parse_state,
    state_after_read,
    weights_for_stage,
)
from healmesh.policies import routing
from healmesh.policies.routing import Weights

STAGES = (10, 50, 100)


def running(stage: int = 10, version: str = "2") -> Rollout:
    return Rollout(stage=stage, canary_version=version, status=RolloutStatus.RUNNING)


def test_a_running_stage_must_be_a_configured_one():
    with pytest.raises(RolloutRejected) as exc:
        apply_change(ControlState(), "rollout", running(stage=43), STAGES)
    assert exc.value.field == "stage" and "[10, 50, 100]" in str(exc.value)
    state = apply_change(ControlState(), "rollout", running(stage=50), STAGES)
    assert state.weights.get(routing.XGB_CANARY) == pytest.approx(0.4)


def test_resting_phases_are_stage_0_and_always_reachable():
    with pytest.raises(RolloutRejected, match="rests at stage 0"):
        apply_change(ControlState(), "rollout", Rollout(stage=10, canary_version="2", status="promoted"), STAGES)
    now = ControlState(rollout=running())
    for status in ("rolled_back", "failed", "promoted", "idle"):
        after = apply_change(now, "rollout", Rollout(status=status), STAGES)
        assert after.rollout.status is RolloutStatus(status) and after.weights.get(routing.XGB_CANARY) == 0
        assert apply_change(after, "rollout", Rollout(status="rolled_back"), STAGES)  # repeating is harmless


def test_one_rollout_at_a_time():
    now = ControlState(rollout=running(version="2"))
    assert apply_change(now, "rollout", running(stage=100, version="2"), STAGES).rollout.stage == 100
    with pytest.raises(RolloutConflict, match="a rollout of v2 is running"):
        apply_change(now, "rollout", running(version="3"), STAGES)
    ended = apply_change(now, "rollout", Rollout(status="rolled_back"), STAGES)
    assert apply_change(ended, "rollout", running(version="3"), STAGES).rollout.canary_version == "3"


def test_status_is_an_enum_and_unknown_ones_are_refused():
    assert Rollout(status="failed").status is RolloutStatus.FAILED
    with pytest.raises(ValueError):
        Rollout(status="half_promoted")


def test_canary_weight_only_while_a_rollout_runs():
    with pytest.raises(ChangeConflict, match="no rollout is running"):
        apply_change(ControlState(), "weights", {"xgboost_stable": 1, "xgboost_canary": 1}, STAGES)
    state = apply_change(ControlState(rollout=running()), "weights", {"xgboost_stable": 1, "xgboost_canary": 1},
                         STAGES)
    assert state.weights.get(routing.XGB_CANARY) == 0.5


def test_a_stage_applies_to_the_weights_it_finds():
    """The rollout split is computed on the weights as they are now, so a stage change made after
    an operator's weight change keeps that change (the lost update of the old read-then-write)."""
    operator = apply_change(ControlState(rollout=running()), "weights", {"xgboost_stable": 0, "pytorch": 1}, STAGES)
    staged = apply_change(operator, "rollout", running(stage=50), STAGES)
    assert staged.weights.get(routing.PYTORCH) == 1.0
    assert apply_change(staged, "shadow", Shadow(enabled=True), STAGES).weights == staged.weights


def test_every_stage_of_any_weights_is_valid_weights():
    """x * 100 / 100 can differ from x in its last bit: stage 100 once left stable at -1e-17, which
    the weights refuse (a stage change then failed with 503)."""
    import random

    from healmesh.control.state import weights_for_stage
    from healmesh.policies.routing import Weights

    rng = random.Random(1)
    for _ in range(2_000):
        w = Weights.parse({"xgboost_stable": rng.randint(1, 9), "pytorch": rng.randint(1, 9)})
        for stage in (10, 50, 100, 0):
            w = weights_for_stage(w, stage)
            assert w.get("xgboost_stable") >= 0


def test_rollout_stage_splits_only_the_xgboost_share():
    w = weights_for_stage(routing.DEFAULT, 10).as_dict()
    assert w == pytest.approx({"xgboost_stable": 0.72, "xgboost_canary": 0.08, "pytorch": 0.2})
    assert weights_for_stage(routing.Weights.parse(w), 0).as_dict() == pytest.approx(routing.DEFAULT.as_dict())
    with pytest.raises(ValueError, match="needs a canary_version"):
        Rollout(stage=10)
    with pytest.raises(ValueError, match="shadow target"):
        Shadow(enabled=True, target="lightgbm")


def test_control_state_parsing_is_tolerant():
    assert parse_state({}) == ControlState()
    raw = {b"weights": b'{"xgboost_stable": 1, "pytorch": 3}', b"shadow": b"not json", b"version": b"7"}
    state = parse_state(raw)
    assert state.weights.get("pytorch") == 0.75 and state.shadow == Shadow() and state.version == 7


# --- a poll must not undo this worker's own change ----------------------------------------------

def test_a_poll_read_older_than_this_workers_change_is_ignored():
    held = ControlState(version=4)
    mine = ControlState(weights=Weights.parse({"pytorch": 1}), version=5)  # set by an admin call meanwhile
    assert state_after_read(held, mine, ControlState(version=4)) is mine  # the read left before the change
    newer = ControlState(version=6)
    assert state_after_read(held, mine, newer) is newer  # another worker changed it again since
    assert state_after_read(held, mine, ControlState(version=5)) == ControlState(version=5)
    # nothing changed here while reading: the read wins, even a lower version (Redis emptied)
    emptied = ControlState(version=0)
    assert state_after_read(held, held, emptied) is emptied


def test_the_shadow_phase_mirrors_to_the_canary_and_leaving_it_stops_the_mirror():
    from healmesh.control.state import (
        CANARY_SHADOW,
        ChangeConflict,
        ControlState,
        Rollout,
        RolloutRejected,
        RolloutStatus,
        Shadow,
        apply_change,
    )
    from healmesh.policies import routing

    stages = (10, 50, 100)
    with pytest.raises(RolloutRejected, match="a shadow stage needs a canary_version"):
        apply_change(ControlState(), "rollout", Rollout(0, None, RolloutStatus.SHADOW), stages)
    with pytest.raises(RolloutRejected, match="rests at stage 0"):
        apply_change(ControlState(), "rollout", Rollout(10, "3", RolloutStatus.SHADOW), stages)
    user_mirror = apply_change(ControlState(), "shadow", Shadow(True, routing.PYTORCH), stages)
    shadowing = apply_change(user_mirror, "rollout", Rollout(0, "3", RolloutStatus.SHADOW), stages)
    assert shadowing.shadow == CANARY_SHADOW and shadowing.weights.get(routing.XGB_CANARY) == 0
    with pytest.raises(ChangeConflict, match="a rollout of v3 is running"):
        apply_change(shadowing, "rollout", Rollout(10, "4", RolloutStatus.RUNNING), stages)
    with pytest.raises(ChangeConflict, match="no rollout is running"):
        apply_change(shadowing, "weights", {**routing.DEFAULT.as_dict(), routing.XGB_STABLE: 0.4,
                                            routing.XGB_CANARY: 0.4}, stages)
    first = apply_change(shadowing, "rollout", Rollout(10, "3", RolloutStatus.RUNNING), stages)
    assert first.shadow == Shadow() and first.weights.get(routing.XGB_CANARY) > 0
    ended = apply_change(shadowing, "rollout", Rollout(0, None, RolloutStatus.ROLLED_BACK), stages)
    assert not ended.shadow.enabled
    # a mirror set by hand outside a rollout's shadow phase is left alone by rollout changes
    kept = apply_change(user_mirror, "rollout", Rollout(10, "3", RolloutStatus.RUNNING), stages)
    assert kept.shadow == Shadow(True, routing.PYTORCH)
