"""The supervisor on small real programs (no models): a killed program comes back, one that
keeps crashing is given up on without taking the others down, and what a dead program left
holding its port is cleared before it starts again (BentoML's workers outlive their arbiter)."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from healmesh.ops import procs
from healmesh.ops.supervisor import client, daemon
from healmesh.ops.supervisor.spec import FlapPolicy, Program, Spec, read_starts

from .conftest import ROOT

pytestmark = pytest.mark.integration

# A server that, like BentoML, hands its listening socket to a worker in a session of its own
# and waits on it: SIGKILL the parent alone and the worker serves on.
PARENT_AND_WORKER = """
import os, socket, sys, time
port = int(sys.argv[1])
sock = socket.socket(); sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", port)); sock.listen(16)
if os.fork() == 0:
    os.setsid()
    while True:
        conn, _ = sock.accept(); conn.close()
while True:
    time.sleep(1)
"""


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.1)


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[tuple[client.Supervisor, dict[str, Program], Spec]]:
    run, logs = tmp_path / "run", tmp_path / "logs"
    logs.mkdir()
    web_port, pair_port = procs.free_port(), procs.free_port()
    programs = {
        "web": Program(name="web", argv=(sys.executable, "-m", "http.server", str(web_port), "--bind", "127.0.0.1"),
                       log_path=str(logs / "web.log"), port=web_port, ready_path="/"),
        "crasher": Program(name="crasher", argv=(sys.executable, "-c", "import sys; sys.exit(3)"),
                           log_path=str(logs / "crasher.log"), ready_path=None),
        "pair": Program(name="pair", argv=(sys.executable, "-c", PARENT_AND_WORKER, str(pair_port)),
                        log_path=str(logs / "pair.log"), port=pair_port, ready_path="", graceful_s=3.0),
    }
    spec = Spec(run_dir=str(run), log_dir=str(logs), programs=tuple(programs.values()),
                flapping=FlapPolicy(attempts=3, window_s=30.0, retry_in_s=1.0, max_retry=1))
    sup = client.start_daemon(spec, cwd=ROOT)
    try:
        yield sup, programs, spec
    finally:
        sup.quit()
        for program in spec.programs:
            for proc in daemon.leftovers(spec.run_dir, program):
                proc.kill()


def test_a_killed_program_is_started_again_and_counted(supervised):
    sup, programs, spec = supervised
    sup.start("web")
    wait_for(lambda: client.answers_ready(programs["web"], running=True), 30, "web to answer")
    (first,) = sup.pids("web")
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: sup.pids("web") not in ([], [first]) and client.answers_ready(programs["web"], running=True),
             30, "web to come back")
    assert len(read_starts(Path(spec.run_dir), "web")) == 2
    assert sup.statuses()["web"] == "active"


def test_a_program_that_keeps_crashing_is_given_up_on_and_the_others_run_on(supervised):
    sup, programs, spec = supervised
    sup.start("web")
    wait_for(lambda: client.answers_ready(programs["web"], running=True), 30, "web to answer")
    web = sup.pids("web")
    sup.start("crasher")
    wait_for(lambda: sup.statuses()["crasher"] == "stopped" and len(read_starts(Path(spec.run_dir), "crasher")) >= 6,
             60, "the flapping policy to give up on the crasher")
    time.sleep(2 * spec.flapping.retry_in_s)  # no retry left: it stays stopped
    assert sup.statuses()["crasher"] == "stopped" and sup.pids("crasher") == []
    # about attempts x (1 + max_retry) starts (one more may slip in before the stop lands), not endless
    expected = spec.flapping.attempts * (1 + spec.flapping.max_retry)
    assert expected <= len(read_starts(Path(spec.run_dir), "crasher")) <= expected + 2
    assert sup.answers() and sup.pids("web") == web and client.answers_ready(programs["web"], running=True)


def test_what_a_killed_parent_left_on_its_port_is_cleared_before_the_restart(supervised):
    sup, programs, spec = supervised
    sup.start("pair")
    wait_for(lambda: procs.port_open(programs["pair"].port or 0), 30, "the pair to listen")
    (parent,) = sup.pids("pair")
    worker = next(p for p in psutil.Process(parent).children())
    os.kill(parent, signal.SIGKILL)  # the worker, in its own session, holds the socket on
    wait_for(lambda: sup.pids("pair") not in ([], [parent]), 30, "the pair to be started again")
    wait_for(lambda: not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE, 30,
             "the leftover worker to be killed")
    (new_parent,) = sup.pids("pair")
    wait_for(lambda: any(c.pid for c in psutil.Process(new_parent).children()), 30, "the new worker")
    assert procs.port_open(programs["pair"].port or 0)
    listeners = {c.pid for c in psutil.net_connections("tcp")
                 if c.laddr and c.laddr.port == programs["pair"].port and c.status == psutil.CONN_LISTEN}
    assert worker.pid not in listeners
    assert listeners <= {new_parent, *(c.pid for c in psutil.Process(new_parent).children())}


def test_quit_stops_every_program_and_their_children(supervised):
    sup, programs, spec = supervised
    sup.start("web")
    sup.start("pair")
    wait_for(lambda: procs.port_open(programs["pair"].port or 0) and procs.port_open(programs["web"].port or 0),
             30, "both to listen")
    pid = sup.pid()
    sup.quit()
    assert pid is not None and not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    for program in spec.programs:
        assert daemon.leftovers(spec.run_dir, program) == [], program.name
