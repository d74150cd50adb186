"""The control state in Redis for the lifecycle (a synchronous redis client, as Airflow tasks
use). Routing changes do not go through here: they go through the gateway's admin API (see
``healmesh.lifecycle.mesh``), so that they are authenticated and audited. What the lifecycle
writes directly is its own part, the drift summary, which the gateway only reads.
"""

from __future__ import annotations

from typing import Any

from healmesh.control import keys
from healmesh.control.state import ControlState, DriftSummary, encode_drift, parse_state


class SyncControlStore:
    def __init__(self, redis: Any, prefix: str) -> None:
        self.redis = redis
        self.key = keys.control(prefix)
        self.drift_key = keys.drift(prefix)

    def read(self) -> ControlState:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.key)
        pipe.hget(self.drift_key, "summary")
        raw, drift_raw = pipe.execute()
        return parse_state(raw, drift_raw)

    def publish_drift(self, summary: DriftSummary) -> None:
        """Replace the drift summary (the gateway exports it as metrics at its next poll)."""
        self.redis.hset(self.drift_key, mapping={"summary": encode_drift(summary)})
