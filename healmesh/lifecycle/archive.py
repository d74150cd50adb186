"""The archiver: copies the feature log (``<p>:features``) and the labels (``<p>:feedback``) from
Redis, which keeps only a hot window, to Parquet parts on an object store (``healmesh.data.objects``),
kept ``archive.retention_s``; and reads them back for the lifecycle.

Exactly once, in order (layout and rules: ``healmesh.policies.archive``): a run takes the archive
lease, finds the newest part's last stream id (the parts are the only checkpoint), reads the
stream after it in batches and writes each batch as parts, one hour each, in id order, each put
atomic. A crash at any point leaves whole parts covering a prefix of the stream; the next run
resumes after the last of them, and a range written twice gets the same name. The lease keeps a
second archiver from racing it (checked before every put).

Entry points: ``archive_once`` (the lifecycle runs it before reading a window) and
``run_forever`` (``healmesh archive run``, the supervised loop, every ``archive.interval_s``).
"""

from __future__ import annotations

import io
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from healmesh.control import keys
from healmesh.control.lease import LeaseStore
from healmesh.data.objects import ObjectStore, open_store
from healmesh.errors import Conflict
from healmesh.policies.archive import (
    STREAMS,
    LabelEntry,
    StreamId,
    days_newest_first,
    expired_days,
    part_range,
    plan_parts,
    resume_after,
    rows_lost,
)
from healmesh.policies.rollout import Lease
from healmesh.settings import Settings

log = logging.getLogger("healmesh.archive")

FEATURES, LABELS = STREAMS
FEATURE_SCHEMA = pa.schema([("stream_id", pa.string()), ("request_id", pa.string()), ("kind", pa.string()),
                            ("ts", pa.float64()), ("data", pa.string())])
LABEL_SCHEMA = pa.schema([("stream_id", pa.string()), ("request_id", pa.string()), ("label", pa.int8()),
                          ("ts", pa.float64()), ("correction", pa.bool_()), ("cold", pa.bool_())])
PRUNE_EVERY_S = 3_600.0


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _fields(raw: dict[Any, Any]) -> dict[str, str]:
    return {_s(k): _s(v) for k, v in raw.items()}


def encode_part(stream: str, entries: list[tuple[str, dict[str, str]]]) -> bytes:
    """A batch of stream entries (id, fields) as one Parquet file (zstd)."""
    ids = [i for i, _ in entries]
    if stream == FEATURES:
        table = pa.table({"stream_id": ids, "request_id": [f.get("request_id", "") for _, f in entries],
                          "kind": [f.get("kind", "") for _, f in entries],
                          "ts": [float(f.get("ts") or 0) for _, f in entries],
                          "data": [f.get("data", "{}") for _, f in entries]}, schema=FEATURE_SCHEMA)
    else:
        table = pa.table({"stream_id": ids, "request_id": [f.get("request_id", "") for _, f in entries],
                          "label": [int(f.get("label") or 0) for _, f in entries],
                          "ts": [float(f.get("ts") or 0) for _, f in entries],
                          "correction": [f.get("correction") == "1" for _, f in entries],
                          "cold": [f.get("cold") == "1" for _, f in entries]}, schema=LABEL_SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def decode_part(data: bytes) -> pa.Table:
    return pq.read_table(io.BytesIO(data))


@dataclass
class StreamRun:
    stream: str
    resumed_after: str | None
    rows: int = 0
    parts: int = 0
    lost: bool = False  # Redis trimmed entries that were never archived (the archiver fell behind)


@dataclass
class ArchiveRun:
    holder: str
    took_lease: bool
    streams: list[StreamRun] = field(default_factory=list)
    pruned: int = 0

    def describe(self) -> dict[str, Any]:
        return {"took_lease": self.took_lease, "pruned": self.pruned,
                **{s.stream: {"rows": s.rows, "parts": s.parts, "lost": s.lost} for s in self.streams}}


class Archiver:
    """Copies both streams of one key prefix to one store. ``after_put`` is called with each
    part's key once it is written (the tests crash there)."""

    def __init__(self, redis: Any, prefix: str, store: ObjectStore, *, batch_rows: int, retention_s: float,
                 lease_ttl_s: float, holder: str | None = None, clock: Callable[[], float] = time.time,
                 after_put: Callable[[str], None] | None = None) -> None:
        self.redis = redis
        self.prefix = prefix
        self.store = store
        self.batch_rows = batch_rows
        self.retention_s = retention_s
        self.lease_ttl_s = lease_ttl_s
        self.holder = holder or f"archiver/{socket.gethostname()}/{os.getpid()}/{id(self):x}"
        self.clock = clock
        self.after_put = after_put
        self.lease = LeaseStore(redis, prefix, key=keys.archive_lease(prefix))
        self._next_prune = 0.0

    def redis_key(self, stream: str) -> str:
        return keys.stream(self.prefix) if stream == FEATURES else keys.feedback_stream(self.prefix)

    def resume_point(self, stream: str) -> StreamId | None:
        """The newest part's last id: the newest day with parts decides (one listing, usually)."""
        for day in days_newest_first(stream, self.clock(), self.retention_s):
            found = resume_after(self.store.list(day))
            if found is not None:
                return found
        return None

    def run_once(self) -> ArchiveRun:
        now = self.clock()
        held = self.lease.acquire(Lease(holder=self.holder, version=None, since=now), self.lease_ttl_s)
        if held is None or held.holder != self.holder:
            return ArchiveRun(self.holder, took_lease=False)
        run = ArchiveRun(self.holder, took_lease=True)
        try:
            for stream in STREAMS:
                run.streams.append(self._copy(stream))
            if now >= self._next_prune:
                run.pruned = self._prune(now)
                self._next_prune = now + PRUNE_EVERY_S
        finally:
            self.lease.release(self.holder)
        return run

    def _copy(self, stream: str) -> StreamRun:
        key = self.redis_key(stream)
        resume = self.resume_point(stream)
        run = StreamRun(stream, str(resume) if resume else None)
        if not self.redis.exists(key):
            return run
        if resume is not None:
            kept = bool(self.redis.xrange(key, min=str(resume), max=str(resume), count=1))
            head = self.redis.xrange(key, min="-", max="+", count=1)
            first = StreamId.parse(_s(head[0][0])) if head else None
            if rows_lost(resume, kept, first):
                run.lost = True
                log.error("archive %s: Redis trimmed past the last archived entry %s (its oldest is now %s): entries "
                          "may have been lost; run the archiver more often than HEALMESH_LABEL_RETENTION_S",
                          stream, resume, first)
        while True:
            raw = self.redis.xrange(key, min=f"({resume}" if resume else "-", max="+", count=self.batch_rows)
            entries = [(_s(i), _fields(f)) for i, f in raw]
            if not entries:
                return run
            for part in plan_parts(stream, [i for i, _ in entries], self.batch_rows):
                data = encode_part(stream, entries[part.start:part.stop])
                lease = self.lease.refresh(self.holder, self.lease_ttl_s)
                if lease is None or lease.holder != self.holder:
                    # ours expired while we stalled and another archiver may be writing: stop
                    raise Conflict(f"the archive lease is now {lease.describe() if lease else 'free'}")
                self.store.put(part.key, data)
                if self.after_put is not None:
                    self.after_put(part.key)
                resume = part.last
                run.rows += part.stop - part.start
                run.parts += 1
            if len(entries) < self.batch_rows:
                return run

    def _prune(self, now: float) -> int:
        gone = 0
        for stream in STREAMS:
            for day in expired_days(stream, now, self.retention_s):
                gone += self.store.delete_prefix(day)
        return gone


# --- reading ---------------------------------------------------------------------------------


def parts_newest_first(store: ObjectStore, stream: str, *, now_s: float, retention_s: float,
                       since_ms: int = 0) -> Iterator[tuple[str, StreamId, StreamId]]:
    """The parts of a stream, newest first, down to the first that ends before ``since_ms``."""
    for day in days_newest_first(stream, now_s, retention_s):
        found = [(k, *r) for k in store.list(day) if (r := part_range(k)) is not None]
        for key, first, last in sorted(found, key=lambda p: p[2], reverse=True):
            if last.ms < since_ms:
                return
            yield key, first, last
        if found and min(f.ms for _, f, _ in found) < since_ms:
            return


def archived_records(store: ObjectStore, *, now_s: float, retention_s: float, before: StreamId | None,
                     since_ms: int = 0) -> Iterator[tuple[str, dict[str, Any]]]:
    """Archived feature log entries, newest first, older than ``before`` (the oldest entry the
    hot window gave): (stream id, {request_id, kind, ts, data})."""
    for key, first, _ in parts_newest_first(store, FEATURES, now_s=now_s, retention_s=retention_s,
                                            since_ms=since_ms):
        if before is not None and first >= before:
            continue  # wholly inside the hot window: read from Redis already
        rows = decode_part(store.get(key)).to_pylist()
        for row in reversed(rows):
            if before is None or StreamId.parse(row["stream_id"]) < before:
                yield row["stream_id"], row


def archived_labels(store: ObjectStore, *, now_s: float, retention_s: float,
                    since_ms: int) -> list[tuple[StreamId, LabelEntry]]:
    """The archived label entries of parts ending at or after ``since_ms``, in stream order."""
    out: list[tuple[StreamId, LabelEntry]] = []
    for key, _, _ in parts_newest_first(store, LABELS, now_s=now_s, retention_s=retention_s, since_ms=since_ms):
        for row in decode_part(store.get(key)).to_pylist():
            out.append((StreamId.parse(row["stream_id"]),
                        LabelEntry(row["request_id"], int(row["label"]), bool(row["correction"]))))
    out.sort(key=lambda e: e[0])
    return out


def feedback_entries(redis: Any, prefix: str) -> list[tuple[StreamId, LabelEntry]]:
    """The hot feedback stream's entries, in stream order."""
    out = []
    for i, raw in redis.xrange(keys.feedback_stream(prefix), min="-", max="+"):
        f = _fields(raw)
        out.append((StreamId.parse(_s(i)), LabelEntry(f["request_id"], int(f["label"]), f.get("correction") == "1")))
    return out


# --- entry points ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchiveView:
    """What a reader needs: the store and how far back it holds parts."""

    store: ObjectStore
    retention_s: float


def open_archive(settings: Settings) -> ObjectStore | None:
    """The configured store (None when the archive is off)."""
    a = settings.archive
    if not a.enabled:
        return None
    return open_store(settings.archive_url, endpoint_url=a.endpoint_url, region=a.region,
                      access_key_id=a.access_key_id,
                      secret_access_key=a.secret_access_key.get_secret_value() if a.secret_access_key else None)


def archiver(settings: Settings, redis: Any, store: ObjectStore, **kw: Any) -> Archiver:
    a = settings.archive
    return Archiver(redis, settings.key_prefix, store, batch_rows=a.batch_rows, retention_s=a.retention_s,
                    lease_ttl_s=a.lease_ttl_s, **kw)


def archive_once(settings: Settings, redis: Any) -> ArchiveView | None:
    """Bring the archive up to date, best effort (another archiver holding the lease is doing
    it; an unreachable store is logged, and the hot window still serves), and return the store
    the lifecycle reads with the hot window (None when the archive is off)."""
    store = open_archive(settings)
    if store is None:
        return None
    try:
        run = archiver(settings, redis, store).run_once()
        log.info("archive %s: %s", store.url, run.describe())
    except Exception as exc:
        log.warning("archive %s: this run failed (%s: %s); reading what is archived", store.url,
                    type(exc).__name__, exc)
    return ArchiveView(store, settings.archive.retention_s)


def run_forever(settings: Settings, redis: Any, stop: threading.Event | None = None) -> None:
    """Archive every ``archive.interval_s`` until ``stop`` is set; errors are logged, never raised
    (a store or Redis away is retried at the next interval)."""
    store = open_archive(settings)
    if store is None:
        log.warning("the archive is off (HEALMESH_ARCHIVE__ENABLED=false): nothing to do")
        return
    stop = stop or threading.Event()
    worker = archiver(settings, redis, store)
    log.info("archiving %s:* to %s every %.0f s", settings.key_prefix, store.url, settings.archive.interval_s)
    while not stop.is_set():
        try:
            run = worker.run_once()
            if run.took_lease and any(s.rows for s in run.streams):
                log.info("archived: %s", run.describe())
        except Exception as exc:
            log.warning("archive run failed (%s: %s); retrying in %.0f s", type(exc).__name__, exc,
                        settings.archive.interval_s)
        stop.wait(settings.archive.interval_s)
