"""The control state in Redis: routing weights, shadow mode, rollout, drift scores, and the
audit trail of every change.

Keys (prefix ``settings.key_prefix``):
- ``<p>:control``  hash: ``weights``, ``shadow``, ``rollout`` (JSON each), ``version`` (int)
- ``<p>:audit``    stream: one entry per change (what, who, why, when, before, after)
- ``<p>:drift``    hash: ``summary`` (JSON), written by the drift DAG, read by the gateway

Routing state changes only here, through the gateway's admin API (the DAGs call it). Every
change is a compare-and-set: the hash is WATCHed, the change is computed on what was read and
written in one MULTI with the version bump and the audit entry; if anyone wrote in between
the change is recomputed on the new state (a rollout stage never undoes a weight change made
meanwhile), and after ``CAS_ATTEMPTS`` collisions, or when the caller's expected version is
stale, it is refused (409). Every gateway worker polls the hash (``control_poll_s``), so a
change reaches all of them within a second; a worker that cannot reach Redis keeps the last
state it read.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any

from redis.exceptions import WatchError

from healmesh.policies import routing
from healmesh.policies.routing import Weights

AUDIT_MAXLEN = 10_000
# Measured (1,000 changes, two processes of 16 writers each on one Redis): 83 retries in all, at
# most 10 attempts for one change, none refused. Without the per-process lock, 32 writers in one
# process needed 8,039 retries and up to 63 attempts for one change.
CAS_ATTEMPTS = 64


class ChangeRejected(ValueError):
    """A change that is invalid in itself (422); ``field`` names what is at fault."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ChangeConflict(RuntimeError):
    """A change that does not fit the current state, or lost its compare-and-set (409)."""


@dataclass(frozen=True)
class Shadow:
    enabled: bool = False
    target: str = routing.PYTORCH

    def __post_init__(self) -> None:
        if self.target not in routing.VARIANTS:
            raise ValueError(f"shadow target must be one of {', '.join(routing.VARIANTS)}, but was {self.target!r}")


class RolloutStatus(StrEnum):
    """The phase of the canary rollout. ``running`` is the only phase with canary traffic;
    the others are resting phases at stage 0 (``failed``: a promotion that could not finish,
    the mesh put back on the champion)."""

    IDLE = "idle"
    RUNNING = "running"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"


class RolloutRejected(ChangeRejected):
    """A rollout change that is invalid in itself (422)."""


class RolloutConflict(ChangeConflict):
    """A rollout change that does not fit the current state (409)."""


@dataclass(frozen=True)
class Rollout:
    stage: int = 0  # percent of the XGBoost share the canary takes
    canary_version: str | None = None
    status: RolloutStatus = RolloutStatus.IDLE
    note: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", RolloutStatus(self.status))
        if not 0 <= self.stage <= 100:
            raise RolloutRejected(f"stage must be in [0, 100], but was {self.stage}", "stage")
        if self.stage > 0 and not self.canary_version:
            raise RolloutRejected("a rollout stage above 0 needs a canary_version", "canary_version")


def check_rollout(new: Rollout, stages: tuple[int, ...]) -> None:
    """What a rollout must be in itself: ``running`` at one of the configured ``stages`` with a
    canary version; every other phase at stage 0 (raises ``RolloutRejected``)."""
    if new.status is RolloutStatus.RUNNING:
        if new.stage not in stages:
            raise RolloutRejected(f"stage must be one of the configured stages {list(stages)}, but was {new.stage}",
                                  "stage")
        if not new.canary_version:
            raise RolloutRejected("a running rollout needs a canary_version", "canary_version")
    elif new.stage != 0:
        raise RolloutRejected(f"status {new.status.value!r} rests at stage 0, but stage was {new.stage}", "stage")


def check_rollout_change(current: Rollout, new: Rollout, stages: tuple[int, ...]) -> None:
    """The legal rollout changes (raises; returns None when legal): ``check_rollout``, and a
    running rollout keeps its canary version until it ends (one rollout at a time: end it
    first). Every resting phase is reachable from any phase: a rollback or a failed promotion
    must always be possible, and repeating one is harmless."""
    check_rollout(new, stages)
    if (new.status is RolloutStatus.RUNNING and current.status is RolloutStatus.RUNNING
            and current.canary_version != new.canary_version):
        raise RolloutConflict(f"a rollout of v{current.canary_version} is running; end it (rolled_back or failed) "
                              f"before starting v{new.canary_version}")


@dataclass(frozen=True)
class DriftSummary:
    """What the drift DAG publishes; the gateway exports it as metrics."""

    checked_at: float | None = None
    model_version: str | None = None
    window_size: int = 0
    decision: str = "none"  # none | drift | no_drift | insufficient_data
    share_drifted: float = 0.0
    scores: Mapping[str, Mapping[str, float]] = field(default_factory=dict)  # feature -> {psi, ks, ...}
    report: str | None = None


@dataclass(frozen=True)
class ControlState:
    weights: Weights = routing.DEFAULT
    shadow: Shadow = Shadow()
    rollout: Rollout = Rollout()
    drift: DriftSummary = DriftSummary()
    version: int = 0

    def describe(self) -> dict[str, Any]:
        return {"weights": self.weights.as_dict(), "shadow": asdict(self.shadow), "rollout": asdict(self.rollout),
                "drift": asdict(self.drift), "version": self.version}


def weights_for_stage(weights: Weights, stage: int) -> Weights:
    """Split the XGBoost share between stable and canary for a rollout stage."""
    w = weights.as_dict()
    xgb = w[routing.XGB_STABLE] + w[routing.XGB_CANARY]
    w[routing.XGB_CANARY] = xgb * stage / 100.0
    # clamped: x * 100 / 100 can differ from x in the last bit, and -1e-17 is not a weight
    w[routing.XGB_STABLE] = max(0.0, xgb - w[routing.XGB_CANARY])
    return Weights.parse(w)


class ControlStore:
    """Reads and changes the control state (redis.asyncio client)."""

    def __init__(self, redis: Any, prefix: str) -> None:
        self.redis = redis
        self.key = f"{prefix}:control"
        self.audit_key = f"{prefix}:audit"
        self.drift_key = drift_key(prefix)
        self._serial = asyncio.Lock()

    async def read(self) -> ControlState:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.key)
        pipe.hget(self.drift_key, "summary")
        raw, drift_raw = await pipe.execute()
        return parse_state(raw, drift_raw)

    async def change(self, what: str, value: Any, *, who: str, why: str, expected_version: int | None = None,
                     stages: tuple[int, ...] = (10, 50, 100)) -> ControlState:
        """Set one part of the state (``weights``, ``shadow`` or ``rollout``) and record it,
        compare-and-set on the state's version (see the module docstring)."""
        async with self._serial:  # one change at a time per process: CAS contention only across processes
            return await self._change(what, value, who=who, why=why, expected_version=expected_version,
                                      stages=stages)

    async def _change(self, what: str, value: Any, *, who: str, why: str, expected_version: int | None,
                      stages: tuple[int, ...]) -> ControlState:
        for attempt in range(CAS_ATTEMPTS):
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(self.key)
                    before = parse_state(await pipe.hgetall(self.key), await pipe.hget(self.drift_key, "summary"))
                    if expected_version is not None and before.version != expected_version:
                        raise ChangeConflict(f"the control state is at version {before.version}, not the expected "
                                             f"{expected_version}: read it again and retry")
                    after = apply_change(before, what, value, stages)
                    pipe.multi()
                    pipe.hset(self.key, mapping=_encode_part(after, what))
                    pipe.hincrby(self.key, "version", 1)
                    pipe.xadd(self.audit_key, {
                        "what": what, "who": who, "why": why, "when": f"{time.time():.3f}",
                        "version": str(before.version + 1),
                        "before": json.dumps(_part(before, what)), "after": json.dumps(_part(after, what)),
                        "state_before": json.dumps(_routing(before)), "state_after": json.dumps(_routing(after)),
                    }, maxlen=AUDIT_MAXLEN, approximate=True)
                    results = await pipe.execute()
                    return replace(after, version=int(results[1]))
                except WatchError:  # someone else wrote first: recompute on their result
                    await asyncio.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))
        raise ChangeConflict(f"the control state kept changing under this change ({CAS_ATTEMPTS} attempts): retry")

    async def audit(self, limit: int = 100) -> list[dict[str, Any]]:
        entries = await self.redis.xrevrange(self.audit_key, count=limit)
        out = []
        for entry_id, fields in entries:
            rec = {_s(k): _s(v) for k, v in fields.items()}
            entry = {"id": _s(entry_id), "what": rec["what"], "who": rec["who"], "why": rec["why"],
                     "when": float(rec["when"]), "before": json.loads(rec["before"]),
                     "after": json.loads(rec["after"])}
            if "version" in rec:
                entry.update(version=int(rec["version"]), state_before=json.loads(rec.get("state_before", "{}")),
                             state_after=json.loads(rec.get("state_after", "{}")))
            out.append(entry)
        return out

    async def publish_drift(self, summary: DriftSummary) -> None:
        await self.redis.hset(self.drift_key, mapping={"summary": encode_drift(summary)})


def drift_key(prefix: str) -> str:
    return f"{prefix}:drift"


def encode_drift(summary: DriftSummary) -> str:
    return json.dumps(asdict(summary))


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _part(state: ControlState, what: str) -> Any:
    if what == "weights":
        return state.weights.as_dict()
    if what == "shadow":
        return asdict(state.shadow)
    if what == "rollout":
        return asdict(state.rollout)
    raise ValueError(f"unknown control part {what!r}")


def _routing(state: ControlState) -> dict[str, Any]:
    """The parts of the state a change can touch (the audit keeps them whole, before and after)."""
    return {"weights": state.weights.as_dict(), "shadow": asdict(state.shadow), "rollout": asdict(state.rollout)}


def apply_change(state: ControlState, what: str, value: Any, stages: tuple[int, ...]) -> ControlState:
    """The state after one change, checked against the state it applies to (pure)."""
    if what == "weights":
        weights = value if isinstance(value, Weights) else Weights.parse(value)
        if weights.get(routing.XGB_CANARY) > 0 and state.rollout.status is not RolloutStatus.RUNNING:
            raise ChangeConflict("the canary has weight but no rollout is running (PUT /admin/rollout)")
        return replace(state, weights=weights)
    if what == "shadow":
        return replace(state, shadow=value)
    if what == "rollout":
        rollout: Rollout = value
        check_rollout_change(state.rollout, rollout, stages)
        # the stage decides the stable/canary split of the XGBoost share
        return replace(state, rollout=rollout, weights=weights_for_stage(state.weights, rollout.stage))
    raise ValueError(f"unknown control part {what!r}")


def _encode_part(state: ControlState, what: str) -> dict[str, str]:
    out = {what: json.dumps(_part(state, what))}
    if what == "rollout":
        out["weights"] = json.dumps(state.weights.as_dict())
    return out


def parse_state(raw: Mapping[Any, Any], drift_raw: Any = None) -> ControlState:
    """Tolerant: a missing or broken part keeps its default (and never stops routing)."""
    fields = {_s(k): _s(v) for k, v in (raw or {}).items()}
    state = ControlState()
    try:
        if "weights" in fields:
            state = replace(state, weights=Weights.parse(json.loads(fields["weights"])))
    except (ValueError, TypeError):
        pass
    try:
        if "shadow" in fields:
            state = replace(state, shadow=Shadow(**json.loads(fields["shadow"])))
    except (ValueError, TypeError):
        pass
    try:
        if "rollout" in fields:
            state = replace(state, rollout=Rollout(**json.loads(fields["rollout"])))
    except (ValueError, TypeError):
        pass
    try:
        if drift_raw:
            state = replace(state, drift=DriftSummary(**json.loads(_s(drift_raw))))
    except (ValueError, TypeError):
        pass
    return replace(state, version=int(fields.get("version", 0) or 0))
