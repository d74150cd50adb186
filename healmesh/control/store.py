"""The control state in Redis for the gateway (redis.asyncio client): read it, change it, read
the audit trail.

Routing state changes only here, through the gateway's admin API (the DAGs call it). Every
change is a compare-and-set: the hash is WATCHed, the change is computed on what was read and
written in one MULTI with the version bump and the audit entry; if anyone wrote in between
the change is recomputed on the new state (a rollout stage never undoes a weight change made
meanwhile), and after ``CAS_ATTEMPTS`` collisions, or when the caller's expected version is
stale, it is refused (409). The worker that made a change routes by it at once; every other
worker, of this server or another, reads it at its next poll of the hash (``control_poll_s``,
0.5 s); a worker that cannot reach Redis keeps the last state it read.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import asdict, replace
from typing import Any

from redis.exceptions import WatchError

from healmesh.control import keys
from healmesh.control.drift_reports import ReportRecord, parse_record, records_from_hash
from healmesh.control.state import ChangeConflict, ControlState, apply_change, as_text, parse_state
from healmesh.errors import ChangeRejected
from healmesh.policies.canary import CanaryConfig

AUDIT_MAXLEN = 10_000
# Measured (1,000 changes, two processes of 16 writers each on one Redis): 83 retries in all, at
# most 10 attempts for one change, none refused. Without the per-process lock, 32 writers in one
# process needed 8,039 retries and up to 63 attempts for one change.
CAS_ATTEMPTS = 64


class ControlStore:
    """Reads and changes the control state (redis.asyncio client)."""

    def __init__(self, redis: Any, prefix: str) -> None:
        self.redis = redis
        self.key = keys.control(prefix)
        self.audit_key = keys.audit(prefix)
        self.drift_key = keys.drift(prefix)
        self.reports_key = keys.drift_reports(prefix)
        self._serial = asyncio.Lock()

    async def read(self) -> ControlState:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.key)
        pipe.hget(self.drift_key, "summary")
        raw, drift_raw = await pipe.execute()
        return parse_state(raw, drift_raw)

    async def change(self, what: str, value: Any, *, who: str, why: str, expected_version: int | None = None,
                     stages: tuple[int, ...] | None = None) -> ControlState:
        """Set one part of the state (``weights``, ``shadow`` or ``rollout``) and record it,
        compare-and-set on the state's version (see the module docstring). ``stages``: the canary
        stages a rollout may be at (default: ``CanaryConfig``'s)."""
        async with self._serial:  # one change at a time per process: CAS contention only across processes
            return await self._change(what, value, who=who, why=why, expected_version=expected_version,
                                      stages=stages or CanaryConfig().stages)

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

    async def reports(self) -> list[ReportRecord]:
        """The drift reports the lifecycle listed, newest first."""
        return records_from_hash(await self.redis.hgetall(self.reports_key))

    async def report(self, report_id: str) -> ReportRecord | None:
        raw = await self.redis.hget(self.reports_key, report_id)
        return None if raw is None else parse_record(raw)

    async def audit(self, limit: int = 100) -> list[dict[str, Any]]:
        entries = await self.redis.xrevrange(self.audit_key, count=limit)
        out = []
        for entry_id, fields in entries:
            rec = {as_text(k): as_text(v) for k, v in fields.items()}
            entry = {"id": as_text(entry_id), "what": rec["what"], "who": rec["who"], "why": rec["why"],
                     "when": float(rec["when"]), "before": json.loads(rec["before"]),
                     "after": json.loads(rec["after"])}
            if "version" in rec:
                entry.update(version=int(rec["version"]), state_before=json.loads(rec.get("state_before", "{}")),
                             state_after=json.loads(rec.get("state_after", "{}")))
            out.append(entry)
        return out


def _part(state: ControlState, what: str) -> Any:
    if what == "weights":
        return state.weights.as_dict()
    if what == "shadow":
        return asdict(state.shadow)
    if what == "rollout":
        return asdict(state.rollout)
    raise ChangeRejected(f"unknown control part {what!r}")


def _routing(state: ControlState) -> dict[str, Any]:
    """The parts of the state a change can touch (the audit keeps them whole, before and after)."""
    return {"weights": state.weights.as_dict(), "shadow": asdict(state.shadow), "rollout": asdict(state.rollout)}


def _encode_part(state: ControlState, what: str) -> dict[str, str]:
    out = {what: json.dumps(_part(state, what))}
    if what == "rollout":
        # a rollout change moves the canary's weight, and entering or leaving the shadow phase the mirror
        out["weights"] = json.dumps(state.weights.as_dict())
        out["shadow"] = json.dumps(asdict(state.shadow))
    return out
