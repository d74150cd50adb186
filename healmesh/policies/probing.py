"""When a supervised program counts as not ready: after consecutive failed probes, not one.

A program that answered its readiness check once can miss one probe while it is busy (Airflow's
api-server stalled 2 s behind the scheduler's first SQLite write and `make up` exited 1 with
everything serving). Like Kubernetes' ``failureThreshold``, a program is judged not ready only
after ``failure_threshold`` failed probes in a row, ``spacing_s`` apart; one answer is enough to
be ready. The verdict keeps the last failure's reason, worded for a person.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class Verdict(StrEnum):
    READY = "ready"
    NOT_READY = "not_ready"
    PROBE_AGAIN = "probe_again"


@dataclass(frozen=True)
class Probe:
    ok: bool
    # how it failed, for a person: "timed out after 2.0 s", "answered 503", "connection refused"
    why: str = ""


class ProbeConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    failure_threshold: int = Field(default=3, ge=1)
    spacing_s: float = Field(default=1.0, ge=0)


DEFAULT = ProbeConfig()


class Readiness:
    """Probes of one program, observed in order, until a verdict."""

    def __init__(self, config: ProbeConfig | None = None) -> None:
        config = config or DEFAULT
        self.config = config
        self.failures = 0
        self.last: Probe | None = None

    def observe(self, probe: Probe) -> Verdict:
        self.last = probe
        if probe.ok:
            self.failures = 0
            return Verdict.READY
        self.failures += 1
        return Verdict.NOT_READY if self.failures >= self.config.failure_threshold else Verdict.PROBE_AGAIN

    @property
    def reason(self) -> str:
        """Why the program is not ready (the last failed probe, and how many in a row)."""
        if self.last is None or self.last.ok:
            return ""
        return f"{self.last.why} ({self.failures} failed probe{'s' if self.failures != 1 else ''} in a row)"
