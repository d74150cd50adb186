"""The feature log: every prediction (and shadow prediction) as a Redis stream entry, written
off the hot path, and the labels that later arrive for them. Key layout: ``healmesh.control.keys``.

``append`` only puts the record in a bounded in-memory buffer; a background task writes the
buffer in pipelined batches. Each record is written by a Lua script that first claims a
marker for its request (``HSETNX``): a batch retried after a broken connection writes nothing
twice, so the stream holds every accepted request exactly once.

When Redis is away the writer spills what is buffered to a local append-only file (the
spool, one per process, fsynced) and keeps memory flat; when Redis answers again it replays
the spool (oldest first, through the same exactly-once script) before newer records. At
shutdown whatever is still buffered goes to the spool, and the next start replays it, also a
spool left by a process that died. A record is counted as dropped only when it is really
lost: the buffer full, or the spool unwritable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from healmesh.control import keys
from healmesh.errors import UnexpectedReply
from healmesh.policies.archive import LabelAge, label_age

log = logging.getLogger("healmesh.feature_log")

SPOOL_SCAN_S = 30.0  # how often a running writer looks for a spool a dead process left

# KEYS: minute hash, stream. ARGV: marker field, hash expiry (unix s), stream min id, request id, kind, ts, data.
# The marker (HSETNX) makes a retried batch write nothing twice.
WRITE_RECORD = """
if redis.call('HSETNX', KEYS[1], ARGV[1], '1') == 0 then return 0 end
redis.call('EXPIREAT', KEYS[1], ARGV[2], 'NX')
redis.call('XADD', KEYS[2], 'MINID', '~', ARGV[3], '*', 'request_id', ARGV[4], 'kind', ARGV[5], 'ts', ARGV[6],
           'data', ARGV[7])
return 1
"""

# KEYS: minute hash, feedback stream. ARGV: request id, label, ts, stream min id.
# Returns 1 stored, 0 same label already there, -1 unknown request, -2 another label there.
WRITE_FEEDBACK = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return -1 end
local field = ARGV[1] .. ':l'
local current = redis.call('HGET', KEYS[1], field)
if current then
  if current == ARGV[2] then return 0 end
  return -2
end
redis.call('HSET', KEYS[1], field, ARGV[2])
redis.call('XADD', KEYS[2], 'MINID', '~', ARGV[4], '*', 'request_id', ARGV[1], 'label', ARGV[2], 'ts', ARGV[3])
return 1
"""

# KEYS: minute hash, feedback stream, audit stream. ARGV: request id, label, ts, stream min id, who, why,
# audit maxlen. An admin's correction (a chargeback reversed): overwrites the label, records both
# the new label (feedback stream) and who changed what and why (audit stream), atomically.
CORRECT_LABEL = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return -1 end
local field = ARGV[1] .. ':l'
local current = redis.call('HGET', KEYS[1], field)
if current == ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], field, ARGV[2])
redis.call('XADD', KEYS[2], 'MINID', '~', ARGV[4], '*', 'request_id', ARGV[1], 'label', ARGV[2], 'ts', ARGV[3],
           'correction', '1', 'previous', current or '')
local before = cjson.encode({request_id = ARGV[1], label = current and tonumber(current) or cjson.null})
local after = cjson.encode({request_id = ARGV[1], label = tonumber(ARGV[2])})
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[7], '*', 'what', 'label', 'who', ARGV[5], 'why', ARGV[6],
           'when', ARGV[3], 'before', before, 'after', after)
return 1
"""


class LabelResult(StrEnum):
    STORED = "stored"
    UNCHANGED = "unchanged"
    UNKNOWN = "unknown"  # no such request was answered (or it is not logged yet)
    CONFLICT = "conflict"  # a different label is there: only an admin correction changes it
    EXPIRED = "expired"  # answered longer ago than the archive's retention: nothing left to label
    CORRECTED = "corrected"
    # answered before Redis's hot window but within the archive's retention: appended to the
    # feedback stream as a cold label, unchecked (its minute hash is gone): the archive joins it;
    # a repeated or conflicting cold label changes nothing there (policies.archive.resolve_labels)
    STORED_COLD = "stored_cold"


# What the Lua scripts answer, mapped to a LabelResult once, here (``label_result``).
FEEDBACK_CODES: Mapping[int, LabelResult] = {1: LabelResult.STORED, 0: LabelResult.UNCHANGED,
                                             -1: LabelResult.UNKNOWN, -2: LabelResult.CONFLICT}
CORRECTION_CODES: Mapping[int, LabelResult] = {1: LabelResult.CORRECTED, 0: LabelResult.UNCHANGED,
                                               -1: LabelResult.UNKNOWN}


def label_result(code: Any, codes: Mapping[int, LabelResult] = FEEDBACK_CODES) -> LabelResult:
    """The result a label script's answer means (``FEEDBACK_CODES`` for WRITE_FEEDBACK,
    ``CORRECTION_CODES`` for CORRECT_LABEL); any other answer raises ``UnexpectedReply``."""
    try:
        return codes[int(code)]
    except (KeyError, ValueError, TypeError):
        raise UnexpectedReply(f"a label script answered {code!r}, not one of {sorted(codes)}") from None


@dataclass(frozen=True)
class LogRecord:
    """One stream entry: ``request_id``, ``kind``, ``ts`` and ``data`` (JSON: the answer and, for
    a primary record, the features)."""

    request_id: str
    kind: str  # "primary" | "shadow"
    ts: str
    data: dict[str, Any]

    def to_line(self) -> bytes:
        return json.dumps({"request_id": self.request_id, "kind": self.kind, "ts": self.ts,
                           "data": self.data}).encode() + b"\n"

    @classmethod
    def from_line(cls, line: bytes) -> LogRecord:
        d = json.loads(line)
        return cls(str(d["request_id"]), str(d["kind"]), str(d["ts"]), dict(d["data"]))


@dataclass
class FeatureLogStats:
    written: int = 0
    dropped: int = 0  # really lost: buffer full, or the spool could not be written
    spilled: int = 0  # written to the local spool while Redis was away (or at shutdown)
    replayed: int = 0  # read back from the spool into Redis
    flush_errors: int = 0
    redis_up: bool = True
    last_error: str | None = None


class Spool:
    """Append-only JSON-lines files under one directory, one active file per process.

    A file's name says whose it is (``<pid>-<process start ms>``): a file whose process is
    gone is anyone's to replay; a live process replays only its own, after moving it aside,
    so that it never reads a file it is still appending to."""

    def __init__(self, directory: Path) -> None:
        import psutil

        self.dir = directory
        me = psutil.Process()
        self.owner = f"{me.pid}-{int(me.create_time() * 1000)}"
        self.active = directory / f"{self.owner}.active.jsonl"
        self._seq = 0

    def append(self, records: list[LogRecord]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.active, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, b"".join(r.to_line() for r in records))
            os.fsync(fd)
        finally:
            os.close(fd)

    def pending(self) -> list[Path]:
        """Files to replay, oldest first: our own set aside, and any dead process's."""
        if not self.dir.is_dir():
            return []
        if self.active.exists():
            self._seq += 1
            os.replace(self.active, self.dir / f"{self.owner}.{time.time_ns()}-{self._seq}.jsonl")
        out = []
        for path in self.dir.glob("*.jsonl"):
            owner = path.name.split(".", 1)[0]
            if owner == self.owner:
                if path != self.active:
                    out.append(path)
            elif not _alive(owner):
                claimed = self.dir / f"{self.owner}.{time.time_ns()}-claimed-{path.name}"
                with contextlib.suppress(FileNotFoundError):  # another process claimed it first
                    os.replace(path, claimed)
                    out.append(claimed)
        return sorted(out, key=lambda p: p.stat().st_mtime_ns)

    @staticmethod
    def read(path: Path, chunk: int) -> Iterator[list[LogRecord]]:
        """Records in batches; a torn last line (a crash mid-write) is skipped and logged."""
        batch: list[LogRecord] = []
        with open(path, "rb") as f:
            for line in f:
                try:
                    batch.append(LogRecord.from_line(line))
                except (ValueError, KeyError, TypeError):
                    log.warning("spool %s: skipped a torn line", path.name)
                    continue
                if len(batch) >= chunk:
                    yield batch
                    batch = []
        if batch:
            yield batch


def _alive(owner: str) -> bool:
    import psutil

    pid, _, started = owner.partition("-")
    try:
        proc = psutil.Process(int(pid))
        return int(proc.create_time() * 1000) == int(started)
    except (psutil.NoSuchProcess, ValueError):
        return False


class FeatureLog:
    def __init__(self, redis: Any, prefix: str, *, retention_s: float, maxlen: int, buffer_max: int,
                 batch_size: int, flush_interval_s: float, spool_dir: Path | None = None,
                 audit_maxlen: int = 10_000, cold_retention_s: float | None = None) -> None:
        self.redis = redis
        self.prefix = prefix
        self.stream = keys.stream(prefix)
        self.feedback_stream = keys.feedback_stream(prefix)
        self.audit_key = keys.audit(prefix)
        self.retention_s = retention_s
        # labels for answers older than retention_s and within this go to the archive (None: refused)
        self.cold_retention_s = cold_retention_s
        self.maxlen = maxlen
        self.audit_maxlen = audit_maxlen
        self.buffer_max = buffer_max
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.spool = Spool(spool_dir) if spool_dir is not None else None
        self.stats = FeatureLogStats()
        self._buffer: deque[LogRecord] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._spool_dirty = True  # a start replays what an earlier process left
        self._next_spool_scan = 0.0
        self._write = redis.register_script(WRITE_RECORD)
        self._feedback = redis.register_script(WRITE_FEEDBACK)
        self._correct = redis.register_script(CORRECT_LABEL)

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
        """Write what is buffered (bounded by the timeout); spool what is left; stop."""
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
            left = len(self._buffer)
            self._spill()
            log.warning("feature log stopped with %d records unwritten: %d spooled for the next start",
                        left, left - len(self._buffer))
        if self._buffer:  # no spool, or it could not be written: really lost, and counted
            self.stats.dropped += len(self._buffer)
            log.error("feature log: %d records lost at shutdown", len(self._buffer))
            self._buffer.clear()

    async def _run(self) -> None:
        backoff = 0.1
        while not self._stopping:
            try:
                if not self.stats.redis_up:
                    await self.redis.ping()  # raises while Redis is away
                    self._up()
                if self._spool_due():
                    await self._replay_spool()
                if not self._buffer:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), timeout=self.flush_interval_s)
                    continue
                batch = [self._buffer[i] for i in range(min(self.batch_size, len(self._buffer)))]
                written = await self._write_batch(batch)
            except Exception as exc:  # Redis away: spool the records, try again later
                self._down(exc)
                self._spill()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            for _ in batch:  # only the writer removes from the left: appends went to the right
                self._buffer.popleft()
            self.stats.written += written
            self._up()
            backoff = 0.1
            if len(self._buffer) < self.batch_size:
                await asyncio.sleep(self.flush_interval_s)

    def _down(self, exc: Exception) -> None:
        self.stats.flush_errors += 1
        self.stats.last_error = f"{type(exc).__name__}: {exc}"
        if self.stats.redis_up:
            log.warning("feature log: Redis unavailable (%s); spooling", self.stats.last_error)
        self.stats.redis_up = False

    def _up(self) -> None:
        if not self.stats.redis_up:
            log.info("feature log: Redis is back; %d records buffered", len(self._buffer))
        self.stats.redis_up = True

    def _spill(self) -> None:
        """Move the buffer to the spool (memory stays flat while Redis is away)."""
        if self.spool is None or not self._buffer:
            return
        records = list(self._buffer)
        try:
            self.spool.append(records)
        except OSError as exc:  # no disk either: the records stay buffered (bounded, counted if dropped)
            log.error("feature log: spool unwritable (%s); %d records held in memory", exc, len(records))
            return
        for _ in records:
            self._buffer.popleft()
        self.stats.spilled += len(records)
        self._spool_dirty = True

    def _spool_due(self) -> bool:
        """After a spill, and every ``SPOOL_SCAN_S`` (a spool another process left when it died)."""
        return self.spool is not None and (self._spool_dirty or time.monotonic() >= self._next_spool_scan)

    async def _replay_spool(self) -> None:
        """Write spooled records back, oldest file first, before anything newer."""
        assert self.spool is not None
        for path in self.spool.pending():
            for batch in Spool.read(path, self.batch_size):
                written = await self._write_batch(batch)  # raises while Redis is away: the file stays
                self.stats.replayed += written  # a record a failed replay already wrote is not counted again
                self.stats.written += written
            path.unlink()
            log.info("feature log: replayed the spool %s", path.name)
        self._spool_dirty = False
        self._next_spool_scan = time.monotonic() + SPOOL_SCAN_S

    async def _write_batch(self, batch: list[LogRecord]) -> int:
        """Write a batch in one round trip; returns how many records were new (a retried
        record's marker is already there and it is not written again)."""
        now = time.time()
        min_id = keys.min_stream_id(now, self.retention_s)
        pipe = self.redis.pipeline(transaction=False)
        for rec in batch:
            ts = keys.answered_at(rec.request_id) or now
            await self._write(keys=[keys.bucket_key(self.prefix, rec.request_id), self.stream],
                              args=[keys.marker_field(rec.request_id, rec.kind),
                                    keys.bucket_expires_at(ts, self.retention_s), min_id, rec.request_id,
                                    rec.kind, rec.ts, json.dumps(rec.data)], client=pipe)
        pipe.xtrim(self.stream, maxlen=self.maxlen, approximate=True)
        results = await pipe.execute()
        return sum(int(r) for r in results[:-1])

    # --- labels --------------------------------------------------------------------------
    def expired(self, request_id: str, now: float | None = None) -> bool:
        ts = keys.answered_at(request_id)
        return ts is not None and (now or time.time()) - ts > self.retention_s

    async def label(self, request_id: str, label: int) -> LabelResult:
        return (await self.labels([(request_id, label)]))[0]

    async def labels(self, items: list[tuple[str, int]]) -> list[LabelResult]:
        """Store labels (one pipelined round trip for the batch); each is idempotent. A label past
        the hot window (and within ``cold_retention_s``) is appended as a cold label."""
        now = time.time()
        out: list[LabelResult | LabelAge] = []  # a LabelAge: its answer comes from the pipeline
        pipe = self.redis.pipeline(transaction=False)
        min_id = keys.min_stream_id(now, self.retention_s)
        for request_id, label in items:
            key = keys.bucket_key(self.prefix, request_id)
            answered = keys.answered_at(request_id)
            if key is None or answered is None:
                out.append(LabelResult.UNKNOWN)
                continue
            age = label_age(answered, now, self.retention_s, self.cold_retention_s)
            out.append(LabelResult.EXPIRED if age is LabelAge.EXPIRED else age)
            if age is LabelAge.HOT:
                await self._feedback(keys=[key, self.feedback_stream],
                                     args=[request_id, str(label), f"{now:.3f}", min_id], client=pipe)
            elif age is LabelAge.COLD:
                pipe.xadd(self.feedback_stream, {"request_id": request_id, "label": str(label), "ts": f"{now:.3f}",
                                                 "cold": "1"}, minid=min_id, approximate=True)
        results = iter(await pipe.execute() if any(isinstance(r, LabelAge) for r in out) else [])
        answers: list[LabelResult] = []
        for r in out:
            if isinstance(r, LabelResult):
                answers.append(r)
            elif r is LabelAge.COLD:
                next(results)  # the new entry's id: a cold label is always appended
                answers.append(LabelResult.STORED_COLD)
            else:
                answers.append(label_result(next(results)))
        return answers

    async def correct(self, request_id: str, label: int, *, who: str, why: str) -> LabelResult:
        """An admin's correction of a stored label; audited with who and why."""
        key = keys.bucket_key(self.prefix, request_id)
        if key is None:
            return LabelResult.UNKNOWN
        if self.expired(request_id):
            return LabelResult.EXPIRED
        now = time.time()
        code = await self._correct(
            keys=[key, self.feedback_stream, self.audit_key],
            args=[request_id, str(label), f"{now:.3f}", keys.min_stream_id(now, self.retention_s), who, why,
                  self.audit_maxlen])
        return label_result(code, CORRECTION_CODES)
