"""Stopping servers: a worker in a process group of its own must not outlive its parent."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from healmesh import procs

# a parent whose child starts a new session (as BentoML's workers run in groups of their own)
PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
print(child.pid, flush=True)
time.sleep(60)
"""


def _spawn() -> tuple[subprocess.Popen[str], int]:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    assert parent.stdout is not None
    return parent, int(parent.stdout.readline())


def _gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def test_kill_tree_kills_a_child_in_its_own_process_group():
    parent, child = _spawn()
    try:
        assert psutil.Process(child).pid == child
        assert procs.kill_tree(parent.pid)
        parent.wait(timeout=5)
        assert _gone(child)
    finally:
        procs.signal_all(procs.process_tree(child), signal.SIGKILL)


def test_stop_leaves_no_orphan_worker():
    parent, child = _spawn()
    server = procs.ServerProcess(name="t", cmd=[], port=0, log_path=Path("/dev/null"))
    server.popen = parent
    try:
        server.stop(timeout=2)
        assert parent.poll() is not None
        assert _gone(child)
    finally:
        procs.signal_all(procs.process_tree(child), signal.SIGKILL)


def test_kill_tree_of_nothing_is_false():
    parent, child = _spawn()
    procs.kill_tree(parent.pid)
    parent.wait(timeout=5)
    assert _gone(child)
    assert not procs.kill_tree(parent.pid)
