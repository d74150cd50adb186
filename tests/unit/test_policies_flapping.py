"""The flapping policy: restart at once, pause when a process keeps exiting, give up in the end."""

from __future__ import annotations

from healmesh.ops.supervisor.spec import ProcState, Program, Spec, process_state, restarts
from healmesh.policies.flapping import Decision, FlapGuard, FlapPolicy

POLICY = FlapPolicy(attempts=3, window_s=30.0, retry_in_s=5.0, max_retry=2)


def crash_loop(guard: FlapGuard, start: float, step: float, n: int) -> list[Decision]:
    return [guard.before_start("x", start + i * step) for i in range(n)]


def test_a_process_killed_now_and_then_is_always_started_again():
    guard = FlapGuard(POLICY)
    assert all(d is Decision.START for d in crash_loop(guard, 0.0, 31.0, 50))  # one crash every 31 s, forever


def test_a_crash_loop_pauses_then_is_given_up_after_max_retry_pauses():
    guard = FlapGuard(POLICY)
    decisions = crash_loop(guard, 0.0, 1.0, 12)
    assert decisions == [Decision.START] * 3 + [Decision.PAUSE] + [Decision.START] * 3 + [Decision.PAUSE] + \
        [Decision.START] * 3 + [Decision.GIVE_UP]
    assert guard.before_start("x", 100.0) is Decision.START  # (the supervisor never asks again unless started)


def test_an_operator_start_gives_a_clean_slate_and_other_processes_are_apart():
    guard = FlapGuard(POLICY)
    crash_loop(guard, 0.0, 1.0, 3)
    assert guard.before_start("y", 3.0) is Decision.START
    assert guard.before_start("x", 3.0) is Decision.PAUSE
    guard.reset("x")
    assert crash_loop(guard, 4.0, 1.0, 3) == [Decision.START] * 3 and guard.pauses("x") == 0


def test_a_process_that_ran_a_whole_window_forgets_its_pauses():
    guard = FlapGuard(POLICY)
    crash_loop(guard, 0.0, 1.0, 4)  # one pause
    assert guard.pauses("x") == 1
    assert guard.before_start("x", 10.0) is Decision.START
    assert guard.before_start("x", 45.0) is Decision.START and guard.pauses("x") == 0


def test_process_state_and_restarts():
    assert process_state(wanted=False, active=False, has_pid=False, ready=False) is ProcState.STOPPED
    assert process_state(wanted=True, active=False, has_pid=False, ready=False) is ProcState.FAILED
    assert process_state(wanted=True, active=True, has_pid=True, ready=False) is ProcState.STARTING
    assert process_state(wanted=True, active=True, has_pid=False, ready=True) is ProcState.STARTING
    assert process_state(wanted=True, active=True, has_pid=True, ready=True) is ProcState.READY
    assert restarts([]) == 0 and restarts([1.0]) == 0 and restarts([1.0, 2.0, 3.0]) == 2


def test_a_spec_survives_its_file():
    spec = Spec(run_dir="/r", log_dir="/l", flapping=POLICY, programs=(
        Program(name="redis", argv=("redis-server", "/r/redis.conf"), log_path="/l/redis.log", port=6380,
                ready_path=""),
        Program(name="scheduler", argv=("airflow", "scheduler"), log_path="/l/s.log", ready_path=None,
                env={"A": "1"})))
    again = Spec.from_json(spec.to_json())
    assert again == spec
    assert again.program("redis").url == "127.0.0.1:6380" and again.program("scheduler").url is None
