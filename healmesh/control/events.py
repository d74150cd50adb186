"""Lifecycle events (drift found, candidate rejected, challenger waiting, stage passed, promoted,
rolled back, rollout failed or aborted, alerts firing and resolved) as a Redis stream, ``<prefix>:events``,
newest last; the status page and the demo read it."""

from __future__ import annotations

import json
import time
from typing import Any

from healmesh.control import keys

MAXLEN = 10_000


def entry(kind: str, message: str, **data: Any) -> dict[str, str]:
    """The stream fields of one event, stamped now."""
    return {"kind": kind, "message": message, "when": f"{time.time():.3f}", "data": json.dumps(data, default=str)}


def record(redis: Any, prefix: str, kind: str, message: str, **data: Any) -> None:
    redis.xadd(keys.events(prefix), entry(kind, message, **data), maxlen=MAXLEN, approximate=True)


# add the event only if the marker key was not there (set with a TTL): atomically, so that two
# workers (or two Alertmanagers) given the same notification record it once
RECORD_ONCE = """
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', unpack(ARGV, 3))
  return 1
end
return 0
"""


async def record_once(redis: Any, prefix: str, marker: str, ttl_s: int, kind: str, message: str,
                      **data: Any) -> bool:
    """Record an event unless ``marker`` (a Redis key) says it was recorded in the last ``ttl_s``
    seconds; True if recorded. ``redis`` is an asyncio client."""
    flat = [x for pair in entry(kind, message, **data).items() for x in pair]
    return bool(await redis.eval(RECORD_ONCE, 2, marker, keys.events(prefix), ttl_s, MAXLEN, *flat))


def recent(redis: Any, prefix: str, count: int = 50) -> list[dict[str, Any]]:
    out = []
    for entry_id, fields in redis.xrevrange(keys.events(prefix), count=count):
        f = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
             for k, v in fields.items()}
        out.append({"id": entry_id.decode() if isinstance(entry_id, bytes) else entry_id, "kind": f["kind"],
                    "message": f["message"], "when": float(f["when"]), "data": json.loads(f["data"])})
    return out


def for_rollout(redis: Any, prefix: str, holder: str, count: int = 500) -> list[dict[str, Any]]:
    """The events one rollout recorded (``rollout=<holder>`` in their data), newest first."""
    return [e for e in recent(redis, prefix, count) if e["data"].get("rollout") == holder]


def stage_verdicts(redis: Any, prefix: str, count: int = 60) -> list[str]:
    """What the judge said at each stage of the newest rollout (its ``stage_passed`` and
    ``stage_failed`` messages since the last ``rollout_started``), oldest first."""
    oldest_first = recent(redis, prefix, count)[::-1]
    started = [i for i, e in enumerate(oldest_first) if e["kind"] == "rollout_started"]
    return [e["message"] for e in oldest_first[started[-1] if started else 0:]
            if e["kind"] in ("stage_passed", "stage_failed")]
