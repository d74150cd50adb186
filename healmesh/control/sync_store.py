"""The control state in Redis for the lifecycle (a synchronous redis client, as Airflow tasks
use). Routing changes do not go through here: they go through the gateway's admin API (see
``healmesh.lifecycle.mesh``), so that they are authenticated and audited. What the lifecycle
writes directly is its own part, the drift summary, which the gateway only reads.
"""

from __future__ import annotations

from typing import Any

from healmesh.control import keys
from healmesh.control.drift_reports import KEEP_LISTED, ReportRecord, encode_record, records_from_hash
from healmesh.control.state import ControlState, DriftSummary, encode_drift, parse_state


class SyncControlStore:
    def __init__(self, redis: Any, prefix: str) -> None:
        self.redis = redis
        self.key = keys.control(prefix)
        self.drift_key = keys.drift(prefix)
        self.reports_key = keys.drift_reports(prefix)

    def read(self) -> ControlState:
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(self.key)
        pipe.hget(self.drift_key, "summary")
        raw, drift_raw = pipe.execute()
        return parse_state(raw, drift_raw)

    def publish_drift(self, summary: DriftSummary) -> None:
        """Replace the drift summary (the gateway exports it as metrics at its next poll)."""
        self.redis.hset(self.drift_key, mapping={"summary": encode_drift(summary)})

    def list_report(self, record: ReportRecord, keep: int = KEEP_LISTED) -> None:
        """List a drift report (its record, keyed by its id), forgetting the oldest beyond ``keep``
        (they stay in MLflow). One writer, the drift check: no compare-and-set needed."""
        self.redis.hset(self.reports_key, record.id, encode_record(record))
        ids = sorted(k.decode() if isinstance(k, bytes) else str(k) for k in self.redis.hkeys(self.reports_key))
        if len(ids) > keep:  # ids sort by check time: the oldest come first
            self.redis.hdel(self.reports_key, *ids[:len(ids) - keep])

    def reports(self) -> list[ReportRecord]:
        """The listed reports, newest first."""
        return records_from_hash(self.redis.hgetall(self.reports_key))
