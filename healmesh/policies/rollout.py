"""The rollout's decisions, pure and typed (no I/O, no clock: times come in as arguments).

One rollout at a time: the running rollout holds a lease (``healmesh.control.lease.LeaseStore``, in
Redis). Here
is what the lease and the mesh's answers mean:
- ``stage_guard`` (``lease_guard``): may a stage (promote) go on? Only while its rollout holds
  the lease and the XGBoost scorer's canary slot serves the version under test;
- ``challenger_step``: may a retrain make its candidate the ``challenger`` now, wait, or give up?
- ``rollback_plan``: how does a rollout that did not promote end: rolled back (a stage failed, it
  could not start, it was aborted), failed (the promotion failed), or left alone (another
  rollout holds the lease and owns the mesh)?
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any


class RolloutStatus(StrEnum):
    """The phase of the canary rollout. ``running`` is the only phase with canary traffic;
    ``shadow`` (stage 0, before the first stage) mirrors live traffic to the canary, whose answers
    no user sees; the others are resting phases at stage 0 (``failed``: a promotion that could not
    finish, the mesh put back on the champion)."""

    IDLE = "idle"
    SHADOW = "shadow"
    RUNNING = "running"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"


# the phases with a version under test (one at a time)
ACTIVE = frozenset({RolloutStatus.SHADOW, RolloutStatus.RUNNING})

# the event kinds the plan reads (recorded by rollout.py)
STAGE_FAILED = "stage_failed"
PROMOTE_FAILED = "promote_failed"
ROLLOUT_ABORTED = "rollout_aborted"


@dataclass(frozen=True)
class Lease:
    holder: str  # "canary_rollout/<run id>", or "retrain/<run id>" while it installs a challenger
    version: str | None
    since: float

    def encode(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def decode(cls, raw: str | bytes | None) -> Lease | None:
        if raw is None:
            return None
        text = raw.decode() if isinstance(raw, bytes) else raw
        try:
            d = json.loads(text)
            return cls(holder=str(d["holder"]), version=d.get("version"), since=float(d.get("since", 0.0)))
        except (ValueError, TypeError, KeyError):
            return cls(holder=text, version=None, since=0.0)  # not ours to parse, but still held

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.since))
        return f"{self.holder} (v{self.version or '-'}, since {when})"


class StopKind(StrEnum):
    LEASE_LOST = "lease_lost"  # aborted, or expired: retrying cannot help
    SLOT_CHANGED = "slot_changed"  # the canary slot serves another version: the evidence is mixed


@dataclass(frozen=True)
class Stop:
    kind: StopKind
    reason: str


def lease_guard(lease: Lease | None, holder: str) -> Stop | None:
    """Why this rollout may no longer act, or None while it holds the lease."""
    if lease is None:
        return Stop(StopKind.LEASE_LOST, "the rollout lease is gone: the rollout was aborted (`healmesh rollout "
                                         "abort`) or its lease expired")
    if lease.holder != holder:
        return Stop(StopKind.LEASE_LOST, f"the rollout lease is held by {lease.describe()}, not by this rollout")
    return None


def stage_guard(lease: Lease | None, holder: str, canary_slot_version: str | None, version: str) -> Stop | None:
    """Why the stage must stop now, or None when it may go on."""
    lost = lease_guard(lease, holder)
    if lost is not None:
        return lost
    if canary_slot_version != version:
        serving = f"v{canary_slot_version}" if canary_slot_version else "nothing"
        return Stop(StopKind.SLOT_CHANGED,
                    f"the XGBoost scorer's canary slot serves {serving}, not v{version} under test")
    return None


class ChallengerStep(StrEnum):
    INSTALL = "install"  # no rollout running: the candidate becomes the challenger now
    WAIT = "wait"  # a rollout holds the lease: changing the challenger now would swap its canary
    GIVE_UP = "give_up"  # waited long enough: the version stays registered, without the alias


def challenger_step(lease: Lease | None, waited_s: float, wait_s: float) -> ChallengerStep:
    if lease is None:
        return ChallengerStep.INSTALL
    return ChallengerStep.GIVE_UP if waited_s >= wait_s else ChallengerStep.WAIT


class RollbackAction(StrEnum):
    ROLL_BACK = "roll_back"  # canary to 0, status rolled_back, challenger removed, champion untouched
    FAIL = "fail"  # the promotion failed: canary to 0, status failed, champion restored if it moved
    LEAVE = "leave"  # another rollout holds the lease: this run must not touch the mesh

    @property
    def status(self) -> RolloutStatus | None:
        return {RollbackAction.ROLL_BACK: RolloutStatus.ROLLED_BACK, RollbackAction.FAIL: RolloutStatus.FAILED,
                RollbackAction.LEAVE: None}[self]


@dataclass(frozen=True)
class RollbackPlan:
    action: RollbackAction
    reason: str


def rollback_plan(holder: str, lease: Lease | None, rollout_events: Sequence[Mapping[str, Any]]) -> RollbackPlan:
    """``rollout_events``: this rollout's events, newest first (``kind``, ``message``)."""
    if lease is not None and lease.holder != holder:
        return RollbackPlan(RollbackAction.LEAVE, f"another rollout holds the lease: {lease.describe()}")
    newest: dict[str, str] = {}
    for e in rollout_events:
        newest.setdefault(str(e["kind"]), str(e["message"]))
    if ROLLOUT_ABORTED in newest:
        return RollbackPlan(RollbackAction.ROLL_BACK, newest[ROLLOUT_ABORTED])
    if PROMOTE_FAILED in newest:
        return RollbackPlan(RollbackAction.FAIL, newest[PROMOTE_FAILED])
    if STAGE_FAILED in newest:
        return RollbackPlan(RollbackAction.ROLL_BACK, newest[STAGE_FAILED])
    return RollbackPlan(RollbackAction.ROLL_BACK, "the rollout could not start (see the prepare task)")
