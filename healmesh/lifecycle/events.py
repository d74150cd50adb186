"""Lifecycle events (drift found, candidate rejected, challenger waiting, stage passed, promoted,
rolled back, rollout failed or aborted) as a Redis stream, ``<prefix>:events``, newest last; the
status page and the demo read it."""

from __future__ import annotations

import json
import time
from typing import Any

MAXLEN = 10_000


def record(redis: Any, prefix: str, kind: str, message: str, **data: Any) -> None:
    redis.xadd(f"{prefix}:events", {"kind": kind, "message": message, "when": f"{time.time():.3f}",
                                    "data": json.dumps(data, default=str)}, maxlen=MAXLEN, approximate=True)


def recent(redis: Any, prefix: str, count: int = 50) -> list[dict[str, Any]]:
    out = []
    for entry_id, fields in redis.xrevrange(f"{prefix}:events", count=count):
        f = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
             for k, v in fields.items()}
        out.append({"id": entry_id.decode() if isinstance(entry_id, bytes) else entry_id, "kind": f["kind"],
                    "message": f["message"], "when": float(f["when"]), "data": json.loads(f["data"])})
    return out


def for_rollout(redis: Any, prefix: str, holder: str, count: int = 500) -> list[dict[str, Any]]:
    """The events one rollout recorded (``rollout=<holder>`` in their data), newest first."""
    return [e for e in recent(redis, prefix, count) if e["data"].get("rollout") == holder]
