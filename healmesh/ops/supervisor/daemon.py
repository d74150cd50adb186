"""The supervisor process: a circus arbiter over the programs of a ``Spec``.

Run as ``python -m healmesh.ops.supervisor.daemon <run_dir>`` (``client.start_daemon`` does). Every
watcher starts stopped: `up` starts them in order, each once the ones it needs are ready.
Circus restarts a process that exits; three hooks do what circus does not:

- ``before_spawn`` kills what a dead process left listening on its port. BentoML's workers run
  in process groups of their own and hold the listening socket: when only the arbiter is
  killed, they go on serving, and the new server could not bind (seen here with a scorer).
- ``after_spawn`` appends the start to ``run/starts/<name>.jsonl``: circus counts no restarts.
- ``before_spawn`` also asks the flapping policy (``healmesh.policies.flapping``) whether this
  start may happen: a pause stops the watcher and starts it again later, giving up leaves it
  stopped. ``before_start`` (an operator's start) gives the program a clean slate.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from healmesh.ops.supervisor.spec import Program, Spec, starts_file
from healmesh.policies.flapping import Decision, FlapGuard

# which program a process belongs to: set in each program's environment, inherited by its children
MARK = "HEALMESH_SUPERVISED"
_SPEC: Spec | None = None
_GUARD = FlapGuard()
_RESUMING: set[str] = set()  # started again after a pause: not an operator's start
PROC_NAME = "healmesh-supervisor"  # its process title (circus sets it), how `ps` and the client know it


def _program(watcher: Any) -> Program | None:
    if _SPEC is None:
        return None
    try:
        return _SPEC.program(watcher.name)
    except KeyError:
        return None


def mark(run_dir: str, name: str) -> str:
    """The mark of program ``name`` of the mesh whose run directory is ``run_dir`` (two meshes
    on one machine, in two homes, never touch each other's processes)."""
    return f"{name}@{run_dir}"


def leftovers(run_dir: str, program: Program) -> list[Any]:
    """Processes of ``program`` still alive, with their descendants: those carrying its mark in
    their environment, and whichever of our processes listens on its port running its
    executable. (A process that sets its title, as Redis and BentoML's arbiter do, overwrites
    the environment /proc shows: the mark alone does not find those.) Another user's processes
    cannot be read and are never touched."""
    import psutil

    want = mark(run_dir, program.name)
    exe = os.path.realpath(program.argv[0]) if program.argv else None
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.pid != os.getpid() and proc.environ().get(MARK) == want:
                found[proc.pid] = proc
    if program.port:
        with contextlib.suppress(psutil.Error):
            for conn in psutil.net_connections(kind="tcp"):
                if conn.pid and conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == program.port:
                    with contextlib.suppress(psutil.Error):
                        proc = psutil.Process(conn.pid)
                        if proc.environ().get(MARK) == want or (exe and proc.exe() == exe):
                            found[proc.pid] = proc
    for proc in list(found.values()):
        with contextlib.suppress(psutil.Error):
            # the parent that set its title (BentoML's arbiter over its marked workers): one level
            # up, only when it runs the program's executable and is not the supervisor or init
            parent = proc.parent()
            if parent is not None and parent.pid > 1 and exe and parent.exe() == exe and parent.name() != PROC_NAME:
                found.setdefault(parent.pid, parent)
    for proc in list(found.values()):
        with contextlib.suppress(psutil.Error):
            for child in proc.children(recursive=True):
                found.setdefault(child.pid, child)
    found.pop(os.getpid(), None)
    return list(found.values())


def before_start(watcher: Any, arbiter: Any, hook_name: str, **kwargs: Any) -> bool:
    if watcher.name in _RESUMING:
        _RESUMING.discard(watcher.name)
    else:
        _GUARD.reset(watcher.name)
    return True


def _resume(watcher: Any, arbiter: Any) -> None:
    """Start a paused program again, unless the supervisor is stopping or it was started already."""
    from tornado import gen

    if getattr(arbiter, "_stopping", False) or not watcher.is_stopped():
        return
    _RESUMING.add(watcher.name)
    arbiter.loop.add_future(gen.convert_yielded(watcher._start()), lambda _: None)


def _kill_leftovers(program: Program, spec: Spec, alive: set[int]) -> None:
    import psutil

    stale = [p for p in leftovers(spec.run_dir, program) if p.pid not in alive]
    for proc in stale:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    if stale:
        psutil.wait_procs(stale, timeout=5)
        print(f"healmesh: killed {len(stale)} leftover process(es) of {program.name}: "
              f"{sorted(p.pid for p in stale)}", file=sys.stderr, flush=True)


def after_stop(watcher: Any, arbiter: Any, hook_name: str, **kwargs: Any) -> bool:
    """Circus signals a stopped process's direct children only while they are still its
    children: one that outlived its parent (or runs in a session of its own) is killed here."""
    program = _program(watcher)
    if program is not None and _SPEC is not None:
        _kill_leftovers(program, _SPEC, alive=set())
    return True


def before_spawn(watcher: Any, arbiter: Any, hook_name: str, **kwargs: Any) -> bool:
    program = _program(watcher)
    if program is None or _SPEC is None:
        return True
    decision = _GUARD.before_start(program.name, time.monotonic())
    if decision is not Decision.START:  # False: circus stops the watcher
        if decision is Decision.PAUSE:
            arbiter.loop.call_later(_SPEC.flapping.retry_in_s, _resume, watcher, arbiter)
        print(f"healmesh: {program.name} keeps exiting: " + (
            f"pause {_SPEC.flapping.retry_in_s:.0f} s (pause {_GUARD.pauses(program.name)} of "
            f"{_SPEC.flapping.max_retry})" if decision is Decision.PAUSE
            else "given up, `healmesh up` starts it again"),
            file=sys.stderr, flush=True)
        return False
    _kill_leftovers(program, _SPEC, alive={p.pid for p in getattr(watcher, "processes", {}).values()})
    return True


def after_spawn(watcher: Any, arbiter: Any, hook_name: str, pid: int = 0, **kwargs: Any) -> bool:
    program = _program(watcher)
    if program is None or _SPEC is None:
        return True
    path = starts_file(Path(_SPEC.run_dir), program.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps({"pid": pid, "time": time.time()}) + "\n")
    return True


def _arbiter_class() -> Any:
    from circus.arbiter import Arbiter
    from circus.util import synchronized
    from tornado import gen

    class MeshArbiter(Arbiter):
        """Circus 0.18 (the release BentoML pins) quits the arbiter, and stops every program,
        when any watcher has no process: what BentoML wants of its own workers, not what a
        supervisor of separate programs may do (a stopped or given-up program would take the
        others down). The same loop without that exit."""

        @synchronized("manage_watchers")
        @gen.coroutine
        def manage_watchers(self) -> Any:
            if self._stopping:
                return
            self.reap_processes()
            yield [watcher.manage_processes() for watcher in self.iter_watchers()]

    return MeshArbiter


def _watcher(program: Program, spec: Spec) -> Any:
    from circus.watcher import Watcher

    log = {"class": "FileStream", "filename": program.log_path}
    hooks = {name: (f"{__name__}.{name}", False) for name in ("before_start", "before_spawn", "after_spawn",
                                                                      "after_stop")}
    return Watcher(name=program.name, cmd=program.argv[0], args=list(program.argv[1:]), working_dir=program.cwd,
                   env={**program.env, MARK: mark(spec.run_dir, program.name)}, copy_env=True, stop_children=True,
                   graceful_timeout=program.graceful_s, autostart=False, respawn=True, numprocesses=1,
                   stdout_stream=dict(log), stderr_stream=dict(log), hooks=hooks, close_child_stdin=True)


def main(run_dir: str) -> None:
    """What ``circusd`` does with a config file, from a ``Spec``: logger, umask, pid file, loop."""
    from circus import logger
    from circus.pidfile import Pidfile
    from circus.util import configure_logger

    global _SPEC, _GUARD
    spec = Spec.load(Path(run_dir))
    _SPEC = spec
    _GUARD = FlapGuard(spec.flapping)
    os.umask(0o077)  # logs and whatever the programs write: their owner's alone
    configure_logger(logger, "info", f"{spec.log_dir}/supervisor.log")
    pidfile = Pidfile(spec.pidfile)
    pidfile.create(os.getpid())
    arbiter = _arbiter_class()([_watcher(p, spec) for p in spec.programs], spec.endpoint, spec.pubsub_endpoint,
                      check_delay=1.0, umask=0o077,
                                proc_name=PROC_NAME)
    try:
        arbiter.start()  # blocks until `quit`
    finally:
        pidfile.unlink()


if __name__ == "__main__":
    main(sys.argv[1])
