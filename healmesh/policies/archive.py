"""The archive's decisions, pure: where a stream entry goes, where a run resumes, whether Redis
trimmed rows before they were copied, and whether a label is hot, cold or too late.

Object layout (one tree per stream, ``features`` and ``labels``)::

    <stream>/dt=YYYY-MM-DD/hour=HH/part-<first id>-<last id>.parquet

partitioned by the hour (UTC) of the entry's stream id, i.e. when Redis took it. A stream id
``<ms>-<seq>`` is written with both numbers zero-padded (``StreamId.name``), so names sort as the
ids do. The parts are the checkpoint: each is written whole (atomic put) and in id order, so the
newest part's last id is where the next run starts; a crash after a put and before anything
else loses nothing, and a rerun writes the same range under the same name (no duplicate).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

STREAMS = ("features", "labels")
DAY_S = 86_400
_ID = re.compile(r"^(\d+)-(\d+)$")
_PART = re.compile(r"part-(\d{16})-(\d{10})-(\d{16})-(\d{10})\.parquet$")


@dataclass(frozen=True, order=True)
class StreamId:
    """A Redis stream id; ordered as Redis orders them."""

    ms: int
    seq: int

    @classmethod
    def parse(cls, raw: str) -> StreamId:
        m = _ID.match(raw)
        if not m:
            raise ValueError(f"a stream id must be <ms>-<seq>, but was {raw!r}")
        return cls(int(m.group(1)), int(m.group(2)))

    def __str__(self) -> str:
        return f"{self.ms}-{self.seq}"

    @property
    def name(self) -> str:
        """Zero-padded, so that object names sort as the ids do."""
        return f"{self.ms:016d}-{self.seq:010d}"


@dataclass(frozen=True)
class Part:
    """One object to write: consecutive entries of one stream within one hour."""

    key: str
    first: StreamId
    last: StreamId
    start: int  # index of its first entry in the batch it was cut from
    stop: int  # one past its last


def hour_prefix(stream: str, ms: int) -> str:
    t = time.gmtime(ms // 1000)
    return f"{stream}/dt={t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}/hour={t.tm_hour:02d}/"


def day_prefix(stream: str, unix_s: float) -> str:
    t = time.gmtime(unix_s)
    return f"{stream}/dt={t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}/"


def part_key(stream: str, first: StreamId, last: StreamId) -> str:
    return f"{hour_prefix(stream, first.ms)}part-{first.name}-{last.name}.parquet"


def part_range(key: str) -> tuple[StreamId, StreamId] | None:
    """The (first, last) ids a part's name holds; None for anything that is not a part (a temp
    file, a stray object)."""
    m = _PART.search(key)
    if not m:
        return None
    return StreamId(int(m.group(1)), int(m.group(2))), StreamId(int(m.group(3)), int(m.group(4)))


def plan_parts(stream: str, ids: Sequence[str], max_rows: int) -> list[Part]:
    """Cut a batch of entries (ids in stream order) into parts: a new part at each hour and
    every ``max_rows`` entries."""
    if max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, but was {max_rows}")
    parsed = [StreamId.parse(i) for i in ids]
    parts: list[Part] = []
    start = 0
    for i in range(1, len(parsed) + 1):
        if i == len(parsed) or i - start >= max_rows or parsed[i].ms // 3_600_000 != parsed[start].ms // 3_600_000:
            first, last = parsed[start], parsed[i - 1]
            parts.append(Part(part_key(stream, first, last), first, last, start, i))
            start = i
    return parts


def resume_after(keys: Sequence[str]) -> StreamId | None:
    """Where a run starts: after the highest last id among the parts (None: nothing archived)."""
    ends = [r[1] for r in (part_range(k) for k in keys) if r is not None]
    return max(ends) if ends else None


def days_newest_first(stream: str, now_s: float, retention_s: float) -> list[str]:
    """The day prefixes that may hold parts, today first, back to the retention (and one day
    more: a part of the day the retention starts in). A resume looks day by day and stops at the
    first that has parts, so it lists one day, not thirty."""
    days = int(retention_s // DAY_S) + 2
    return [day_prefix(stream, now_s - d * DAY_S) for d in range(days)]


def expired_days(stream: str, now_s: float, retention_s: float, lookback_days: int = 7) -> list[str]:
    """Day prefixes wholly older than the retention, the ``lookback_days`` past it: what a prune
    deletes (a day is kept until its last hour is past the retention)."""
    first = int((now_s - retention_s) // DAY_S) - 1  # the newest day that ended before the cutoff
    return [day_prefix(stream, (first - d) * DAY_S) for d in range(lookback_days)]


def rows_lost(resume: StreamId | None, resume_kept: bool, first: StreamId | None) -> bool:
    """Whether Redis may have trimmed entries that were never archived: the last archived entry
    (``resume``) is gone from the stream and newer entries are there (trimming takes the oldest
    first, so while the last archived entry is still in Redis nothing after it was trimmed).
    Redis 7.0 keeps no count of trimmed ids (``max-deleted-entry-id`` moves on XDEL only), so an
    archiver that fell behind by exactly nothing is flagged too: it is behind the hot window."""
    return resume is not None and not resume_kept and first is not None and first > resume


class LabelAge(StrEnum):
    HOT = "hot"  # within Redis's window: the minute hash checks it (unknown, conflict, ...)
    COLD = "cold"  # past the window, within the archive's retention: stored, joined from the archive
    EXPIRED = "expired"  # past both: its features are gone, the label is refused (410)


def label_age(answered_at: float, now_s: float, hot_s: float, cold_s: float | None) -> LabelAge:
    age = now_s - answered_at
    if age <= hot_s:
        return LabelAge.HOT
    if cold_s is not None and age <= cold_s:
        return LabelAge.COLD
    return LabelAge.EXPIRED


@dataclass(frozen=True)
class LabelEntry:
    """One entry of the feedback log, hot or archived, in stream order."""

    request_id: str
    label: int
    correction: bool


def resolve_labels(entries: Sequence[LabelEntry]) -> dict[str, int]:
    """Each request's label from the feedback log in stream order: the first label stands (as on
    the hot path, where a different later label is a conflict and not stored); an admin's
    correction replaces it. A repeated or conflicting cold label thus changes nothing."""
    out: dict[str, int] = {}
    for e in entries:
        if e.correction or e.request_id not in out:
            out[e.request_id] = e.label
    return out
