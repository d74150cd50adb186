"""The feature log: every prediction (and shadow prediction) as a Redis stream entry, written
off the hot path.

``append`` only puts the record in a bounded in-memory buffer; a background task writes the
buffer in pipelined batches. When Redis is away the records stay buffered (in order) and are
written when it returns; when the buffer is full new records are dropped and counted.

Each record is written by a Lua script that first claims a marker field on the request's
hash (``HSETNX``): a batch retried after a broken connection writes nothing twice, so the
stream holds every accepted request exactly once. The request hash (``<p>:req:<id>``, kept
``feedback_ttl_s``) is also what ``/feedback`` looks up and labels.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("healmesh.feature_log")

# KEYS: request hash, stream. ARGV: marker, ttl, maxlen, request id, kind, ts, data, hash field, hash value.
# The marker (HSETNX) makes a retried batch write nothing twice.
WRITE_RECORD = """
if redis.call('HSETNX', KEYS[1], ARGV[1], '1') == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[8], ARGV[9])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'request_id', ARGV[4], 'kind', ARGV[5], 'ts', ARGV[6],
           'data', ARGV[7])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: request hash, feedback stream. ARGV: label, ts, maxlen, request id.
# Returns 1 stored, 0 same label already there, -1 unknown request, -2 another label there.
WRITE_FEEDBACK = """
if redis.call('HEXISTS', KEYS[1], 'logged') == 0 then return -1 end
local current = redis.call('HGET', KEYS[1], 'label')
if current then
  if current == ARGV[1] then return 0 end
  return -2
end
redis.call('HSET', KEYS[1], 'label', ARGV[1], 'label_ts', ARGV[2])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'request_id', ARGV[4], 'label', ARGV[1], 'ts', ARGV[2])
return 1
"""


@dataclass(frozen=True)
class LogRecord:
    """One stream entry: ``request_id``, ``kind``, ``ts`` and ``data`` (JSON: the answer and, for
    a primary record, the features). ``summary`` goes to the request hash under the kind's name
    (``primary`` / ``shadow``) for feedback and live-quality joins."""

    request_id: str
    kind: str  # "primary" | "shadow"
    ts: str
    data: dict[str, Any]
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def marker(self) -> str:
        return "logged" if self.kind == "primary" else "shadow_logged"


@dataclass
class FeatureLogStats:
    written: int = 0
    dropped: int = 0
    flush_errors: int = 0
    redis_up: bool = True
    last_error: str | None = None


class FeatureLog:
    def __init__(self, redis: Any, prefix: str, *, maxlen: int, ttl_s: int, buffer_max: int,
                 batch_size: int, flush_interval_s: float) -> None:
        self.redis = redis
        self.prefix = prefix
        self.stream = f"{prefix}:features"
        self.feedback_stream = f"{prefix}:feedback"
        self.maxlen = maxlen
        self.ttl_s = ttl_s
        self.buffer_max = buffer_max
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.stats = FeatureLogStats()
        self._buffer: deque[LogRecord] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._write = redis.register_script(WRITE_RECORD)
        self._feedback = redis.register_script(WRITE_FEEDBACK)

    def request_key(self, request_id: str) -> str:
        return f"{self.prefix}:req:{request_id}"

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def append(self, record: LogRecord) -> bool:
        """Queue a record; False (and counted) when the buffer is full. Never blocks."""
        if len(self._buffer) >= self.buffer_max:
            self.stats.dropped += 1
            return False
        self._buffer.append(record)
        if len(self._buffer) >= self.batch_size:
            self._wake.set()
        return True

    # --- the writer ----------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="feature-log-writer")

    async def stop(self, drain_timeout_s: float = 5.0) -> None:
        """Write what is buffered (bounded by the timeout), then stop."""
        deadline = time.monotonic() + drain_timeout_s
        while self._buffer and self.stats.redis_up and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._buffer:
            log.warning("feature log stopped with %d records unwritten", len(self._buffer))

    async def _run(self) -> None:
        backoff = 0.1
        while not self._stopping:
            if not self._buffer:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self.flush_interval_s)
                continue
            batch = [self._buffer[i] for i in range(min(self.batch_size, len(self._buffer)))]
            try:
                await self._write_batch(batch)
            except Exception as exc:  # Redis away: keep the records, try again later
                self.stats.flush_errors += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                if self.stats.redis_up:
                    log.warning("feature log: Redis unavailable (%s); buffering", self.stats.last_error)
                self.stats.redis_up = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            for _ in batch:  # only the writer removes from the left: appends went to the right
                self._buffer.popleft()
            self.stats.written += len(batch)
            if not self.stats.redis_up:
                log.info("feature log: Redis is back; %d records still buffered", len(self._buffer))
            self.stats.redis_up = True
            backoff = 0.1
            if len(self._buffer) < self.batch_size:
                await asyncio.sleep(self.flush_interval_s)

    async def _write_batch(self, batch: list[LogRecord]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for rec in batch:
            await self._write(keys=[self.request_key(rec.request_id), self.stream],
                              args=[rec.marker, self.ttl_s, self.maxlen, rec.request_id, rec.kind, rec.ts,
                                    json.dumps(rec.data), rec.kind, json.dumps(rec.summary)], client=pipe)
        await pipe.execute()

    # --- feedback ------------------------------------------------------------------------
    async def feedback(self, request_id: str, label: int) -> int:
        """1 stored, 0 unchanged (same label), -1 unknown request, -2 a different label exists."""
        return int(await self._feedback(keys=[self.request_key(request_id), self.feedback_stream],
                                        args=[str(label), f"{time.time():.3f}", self.maxlen, request_id]))
