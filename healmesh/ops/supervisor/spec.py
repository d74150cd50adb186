"""What the supervisor runs, and how a process's state is read. Plain data and pure functions."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path

from healmesh.policies.flapping import FlapPolicy
from healmesh.urls import local_address, local_url

SPEC_FILE = "supervisor.json"


@dataclass(frozen=True)
class Program:
    """One supervised process. ``ready_path`` is an HTTP path that answers 200 once it serves,
    '' for a TCP port that accepts (Redis), None for a process with no port (Airflow's
    scheduler): ready while it runs."""

    name: str
    argv: tuple[str, ...]
    log_path: str
    port: int | None = None
    ready_path: str | None = "/readyz"
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    graceful_s: float = 15.0

    @property
    def url(self) -> str | None:
        """Where it answers: an HTTP URL, or host:port for a TCP server (Redis)."""
        if not self.port:
            return None
        return local_address(self.port) if self.ready_path == "" else local_url(self.port)


def control_endpoint(run_dir: str | Path) -> str:
    """The supervisor's control socket in its run directory (the daemon binds it, the client calls it)."""
    return f"ipc://{run_dir}/supervisor.ctl"


def pidfile_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "supervisor.pid"


@dataclass(frozen=True)
class Spec:
    run_dir: str
    log_dir: str
    programs: tuple[Program, ...]
    flapping: FlapPolicy = FlapPolicy()

    @property
    def endpoint(self) -> str:
        return control_endpoint(self.run_dir)

    @property
    def pubsub_endpoint(self) -> str:
        return f"ipc://{self.run_dir}/supervisor.pub"

    @property
    def pidfile(self) -> str:
        return str(pidfile_path(self.run_dir))

    def program(self, name: str) -> Program:
        for p in self.programs:
            if p.name == name:
                return p
        raise KeyError(name)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> Spec:
        raw = json.loads(text)
        programs = tuple(Program(**{**p, "argv": tuple(p["argv"])}) for p in raw["programs"])
        return cls(run_dir=raw["run_dir"], log_dir=raw["log_dir"], programs=programs,
                   flapping=FlapPolicy(**raw["flapping"]))

    @classmethod
    def load(cls, run_dir: Path) -> Spec:
        return cls.from_json((run_dir / SPEC_FILE).read_text())


class ProcState(StrEnum):
    READY = "ready"        # running and answering its readiness check
    STARTING = "starting"  # running, not ready yet (or restarted and loading)
    FAILED = "failed"      # should run, but the supervisor gave up on it (flapping)
    STOPPED = "stopped"    # not asked to run


def process_state(wanted: bool, active: bool, has_pid: bool, ready: bool) -> ProcState:
    """A process's state from what the supervisor says (``active``: its watcher runs, ``has_pid``:
    a process is there) and whether it answers. A watcher stopped while we want it is one the
    flapping policy gave up on: `up` starts watchers, only the policy or `down` stops them."""
    if not wanted:
        return ProcState.STOPPED
    if not active:
        return ProcState.FAILED
    return ProcState.READY if has_pid and ready else ProcState.STARTING


def restarts(starts: Sequence[float]) -> int:
    """Restarts since `up`: every start after the first."""
    return max(0, len(starts) - 1)


def starts_file(run_dir: Path, name: str) -> Path:
    return run_dir / "starts" / f"{name}.jsonl"


def read_starts(run_dir: Path, name: str) -> list[float]:
    """When the supervisor spawned ``name`` (the after_spawn hook appends one line each time)."""
    try:
        lines = starts_file(run_dir, name).read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            out.append(float(json.loads(line)["time"]))
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a crash of the supervisor itself
    return out
