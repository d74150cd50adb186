"""Every Redis key the gateway and the lifecycle share. Pure: names and arithmetic, no client.

Control plane (see ``healmesh.control.state`` and ``store``):
- ``<p>:control``  hash: routing state, ``version``.
- ``<p>:audit``    stream: one entry per control change (and per label correction).
- ``<p>:drift``    hash: ``summary``, written by the drift check, read by the gateway.
- ``<p>:drift:reports``  hash: report id -> its record (``healmesh.control.drift_reports``):
  what the check decided and the MLflow run holding the report; the newest ``KEEP_LISTED``.
- ``<p>:events``   stream: lifecycle events (``healmesh.control.events``).
- ``<p>:rollout:lease``  the rollout lease (``healmesh.control.lease``).
- ``<p>:archive:lease``  the archiver's lease: one copies the streams at a time.

Feature log (the gateway writes, the lifecycle reads):
- ``<p>:features``  stream: one entry per answered row (and per shadow answer), trimmed to the
  retention by entry time (``MINID``) and capped at ``feature_log.stream_maxlen`` entries.
- ``<p>:feedback``  stream: one entry per stored label (and per correction); a label past the hot
  window (a "cold" one, ``cold=1``) goes here alone, without the minute hash, for the archiver.
- ``<p>:req:<minute>``  hash per minute of answers: ``<id>`` (logged), ``<id>:s`` (shadow
  logged), ``<id>:l`` (its label). It expires ``label_retention_s`` after its minute ends: what
  a label needs is kept exactly as long as a label may arrive, and the Redis `make up` starts
  may evict these keys first (they alone carry a TTL) under memory pressure.

A request id is ``<ms since epoch, 12 hex><80 random bits, 20 hex>``: time-ordered, and its
answer time (hence its hash key) can be read off it, so a late label is told apart from an
unknown one without a lookup.
"""

from __future__ import annotations

import os
import re

BUCKET_S = 60  # one hash per minute of answers: few keys, each small enough to expire whole
REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")


def new_request_id(now_s: float) -> str:
    return f"{int(now_s * 1000):012x}{os.urandom(10).hex()}"


def answered_at(request_id: str) -> float | None:
    """The answer time encoded in a request id (None when it is not one of ours)."""
    if not REQUEST_ID.match(request_id):
        return None
    return int(request_id[:12], 16) / 1000.0


def control(prefix: str) -> str:
    return f"{prefix}:control"


def audit(prefix: str) -> str:
    return f"{prefix}:audit"


def drift(prefix: str) -> str:
    return f"{prefix}:drift"


def drift_reports(prefix: str) -> str:
    return f"{prefix}:drift:reports"


def events(prefix: str) -> str:
    return f"{prefix}:events"


def lease(prefix: str) -> str:
    return f"{prefix}:rollout:lease"


def archive_lease(prefix: str) -> str:
    return f"{prefix}:archive:lease"


def stream(prefix: str) -> str:
    return f"{prefix}:features"


def feedback_stream(prefix: str) -> str:
    return f"{prefix}:feedback"


def bucket_of(ts: float) -> int:
    return int(ts // BUCKET_S)


def bucket_key(prefix: str, request_id: str) -> str | None:
    ts = answered_at(request_id)
    return None if ts is None else f"{prefix}:req:{bucket_of(ts)}"


def bucket_expires_at(ts: float, retention_s: float) -> int:
    """Unix time at which the hash of ``ts``'s minute may go: the last answer in it keeps its
    label slot for at least ``retention_s``."""
    return int((bucket_of(ts) + 1) * BUCKET_S + retention_s) + 1


def min_stream_id(now_s: float, retention_s: float) -> str:
    """Stream entries older than this (by write time) are trimmed."""
    return f"{max(0, int((now_s - retention_s) * 1000))}-0"


def marker_field(request_id: str, kind: str) -> str:
    return request_id if kind == "primary" else f"{request_id}:s"


def label_field(request_id: str) -> str:
    return f"{request_id}:l"
