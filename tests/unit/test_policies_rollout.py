"""Tests healmesh.policies.rollout: the stage guard, the challenger step, the rollback plan, the lease."""

# --- issue 8, item 6: one rollout at a time ---------------------------------------------------

def test_a_stage_goes_on_only_with_the_lease_and_the_version_under_test_in_the_slot():
    from healmesh.policies.rollout import Lease, StopKind, stage_guard

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
    from healmesh.policies.rollout import ChallengerStep, Lease, challenger_step

    running = Lease("canary_rollout/run-1", "4", 0.0)
    assert challenger_step(None, 0.0, 60) is ChallengerStep.INSTALL
    assert challenger_step(None, 999.0, 60) is ChallengerStep.INSTALL
    assert challenger_step(running, 10.0, 60) is ChallengerStep.WAIT
    assert challenger_step(running, 60.0, 60) is ChallengerStep.GIVE_UP


def test_the_rollback_plan_reads_how_the_rollout_ended():
    from healmesh.policies.rollout import Lease, RollbackAction, RolloutStatus, rollback_plan

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
    from healmesh.policies.rollout import Lease

    lease = Lease("canary_rollout/run-1", "4", 1_700_000_000.5)
    assert Lease.decode(lease.encode().encode()) == lease
    assert Lease.decode(None) is None
    assert Lease.decode(b"someone-else").holder == "someone-else"
