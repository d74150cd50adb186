"""Starting the supervisor and asking it things (circus's control socket, a Unix socket under
``$HEALMESH_HOME/run``, 0700: only its owner can reach it)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from healmesh.credentials import private_dir
from healmesh.errors import HealmeshError
from healmesh.ops.supervisor.daemon import PROC_NAME
from healmesh.ops.supervisor.spec import SPEC_FILE, Program, Spec, control_endpoint, pidfile_path
from healmesh.policies.probing import DEFAULT as DEFAULT_PROBES
from healmesh.policies.probing import Probe, ProbeConfig, Readiness, Verdict


class SupervisorError(HealmeshError, RuntimeError):
    """The local supervisor refused a command, or did not answer."""


class Supervisor:
    def __init__(self, run_dir: Path, timeout_s: float = 10.0) -> None:
        self.run_dir = run_dir
        self.timeout_s = timeout_s

    @property
    def endpoint(self) -> str:
        return control_endpoint(self.run_dir)

    @property
    def pidfile(self) -> Path:
        return pidfile_path(self.run_dir)

    def pid(self) -> int | None:
        """The supervisor's pid while it runs (its pid file names a live circus arbiter)."""
        try:
            pid = int(self.pidfile.read_text().strip())
            proc = psutil.Process(pid)
            return pid if PROC_NAME in " ".join(proc.cmdline()) else None
        except (OSError, ValueError, psutil.Error):
            return None

    def call(self, command: str, **props: Any) -> dict[str, Any]:
        from circus.client import CircusClient
        from circus.exc import CallError

        client = CircusClient(endpoint=self.endpoint, timeout=self.timeout_s)
        try:
            answer = client.call({"command": command, "properties": props})
        except CallError as exc:
            raise SupervisorError(f"the supervisor did not answer {command!r}: {exc}") from exc
        finally:
            client.stop()
        if answer.get("status") != "ok":
            raise SupervisorError(f"the supervisor refused {command!r}: {answer.get('reason', answer)}")
        return answer

    def answers(self) -> bool:
        if self.pid() is None:
            return False
        try:
            self.call("status")
            return True
        except SupervisorError:
            return False

    def _busy_call(self, command: str, **props: Any) -> dict[str, Any]:
        """A command that circus refuses while another one of its kind runs ("arbiter is already
        running ... command"): tried again for a while."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                return self.call(command, **props)
            except SupervisorError as exc:
                if "already running" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def start(self, name: str) -> None:
        """Spawn ``name`` (returns once spawned, not once ready)."""
        self._busy_call("start", name=name, waiting=True)

    def stop(self, name: str) -> None:
        self._busy_call("stop", name=name, waiting=True)

    def pids(self, name: str) -> list[int]:
        return [int(p) for p in self.call("list", name=name).get("pids", [])]

    def statuses(self) -> dict[str, str]:
        """Each program's watcher: 'active' or 'stopped'."""
        return dict(self.call("status").get("statuses", {}))

    def quit(self, timeout_s: float = 60.0) -> None:
        """Stop every program (its stop signal, then SIGKILL to its whole tree after its grace
        period) and the supervisor; waits for the supervisor to exit."""
        pid = self.pid()
        if pid is None:
            return
        with contextlib.suppress(SupervisorError):
            self.call("quit", waiting=True)
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).wait(timeout=timeout_s)


def start_daemon(spec: Spec, cwd: Path) -> Supervisor:
    """Write the spec (0600) and start the supervisor detached, in a session of its own: it
    outlives `healmesh up`. Returns once it answers."""
    run_dir = private_dir(Path(spec.run_dir))
    path = run_dir / SPEC_FILE
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(spec.to_json())
    for stale in ("supervisor.ctl", "supervisor.pub", "supervisor.pid"):
        (run_dir / stale).unlink(missing_ok=True)
    out = os.open(Path(spec.log_dir) / "supervisor.out", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "healmesh.ops.supervisor.daemon", str(run_dir)], cwd=cwd,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, umask=0o077)
    finally:
        os.close(out)
    supervisor = Supervisor(run_dir)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SupervisorError(f"the supervisor exited with {proc.returncode}: see {spec.log_dir}/supervisor.out")
        if supervisor.answers():
            return supervisor
        time.sleep(0.2)
    raise SupervisorError(f"the supervisor did not answer within 30 s: see {spec.log_dir}/supervisor.log")


def answers_ready(program: Program, running: bool) -> bool:
    """A program's readiness check: its HTTP path answers 200, its port accepts (Redis), or,
    with no port, it runs."""
    return probe_ready(program, running).ok


def probe_ready(program: Program, running: bool) -> Probe:
    """``answers_ready`` with how it failed."""
    from healmesh.ops.procs import probe

    if program.port is None or program.ready_path is None:
        return Probe(True) if running else Probe(False, "not running")
    return probe(program.port, program.ready_path)


def readiness(program: Program, running: bool, config: ProbeConfig = DEFAULT_PROBES,
              sleep: Callable[[float], None] = time.sleep) -> Readiness:
    """Probe until a verdict (``policies.probing``): one answer is ready, ``failure_threshold``
    failures in a row are not; a program that does not run is not ready at once."""
    if not running:  # nothing to wait for
        judged = Readiness(config.model_copy(update={"failure_threshold": 1}))
        judged.observe(Probe(False, "not running"))
        return judged
    judged = Readiness(config)
    while judged.observe(probe_ready(program, running)) is Verdict.PROBE_AGAIN:
        sleep(config.spacing_s)
    return judged
