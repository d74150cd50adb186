"""The recent window of live traffic, read back from the gateway's feature log (Redis) and, past
its hot window, from the archive (``healmesh.lifecycle.archive``).

Each primary record of the stream gives the request's features and the answer (variant,
model version, probability); labels come from the minute hash of its request id, where
``/feedback`` put them (key layout: ``healmesh.control.keys``), and for the others from the
feedback log (the hot stream and its archived parts: cold labels, and labels whose hash expired).
Hot and archived records overlap; each request is read once (by request id).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from healmesh import schema
from healmesh.control import keys
from healmesh.lifecycle.archive import ArchiveView, archived_labels, archived_records, feedback_entries
from healmesh.policies.archive import StreamId, resolve_labels

ANSWER_COLUMNS = ["request_id", "ts", "variant", "model", "model_version", "probability", "predicted"]


@dataclass(frozen=True)
class Window:
    frame: pd.DataFrame  # features + ANSWER_COLUMNS (+ the label column when labels were joined)
    first_id: str | None
    last_id: str | None
    first_ts: float | None
    last_ts: float | None

    def describe(self) -> dict[str, Any]:
        return {"records": len(self.frame), "first_id": self.first_id, "last_id": self.last_id,
                "first_ts": self.first_ts, "last_ts": self.last_ts}


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _newest_first(redis: Any, stream: str, *, min_id: str = "-",
                  chunk: int = 5_000) -> Iterator[tuple[str, dict[str, str]]]:
    """The stream's entries from the newest down to ``min_id``, in pages of ``chunk``: (id, fields)."""
    upper = "+"
    while True:
        entries = redis.xrevrange(stream, max=upper, min=min_id, count=chunk)
        for entry_id, fields in entries:
            yield _s(entry_id), {_s(k): _s(v) for k, v in fields.items()}
        if len(entries) < chunk:
            return
        upper = "(" + _s(entries[-1][0])  # exclusive: continue below the oldest entry read


def _row(rec: dict[str, Any], ts: float) -> dict[str, Any]:
    data = json.loads(rec["data"])
    row = dict(data["features"])
    row.update(request_id=rec["request_id"], ts=ts, variant=data["variant"], model=data["model"],
               model_version=str(data["model_version"]), probability=float(data["probability"]),
               predicted=int(data["label"]))
    return row


def read_window(redis: Any, prefix: str, *, last_n: int | None = 10_000, since_s: float | None = None,
                chunk: int = 5_000, archive: ArchiveView | None = None) -> Window:
    """The newest primary records: at most ``last_n`` and (if given) not older than ``since_s``;
    from Redis, then (when the hot window holds fewer) from the archive, each request once."""
    now = time.time()
    cutoff = now - since_s if since_s else None
    rows: list[dict[str, Any]] = []
    ids: list[str] = []
    oldest: str | None = None  # the oldest hot entry read: the archive continues below it
    done = False
    for entry_id, rec in _newest_first(redis, keys.stream(prefix), chunk=chunk):
        oldest = entry_id
        if rec.get("kind") != "primary":
            continue
        ts = float(rec["ts"])
        if cutoff is not None and ts < cutoff:
            done = True
            break
        rows.append(_row(rec, ts))
        ids.append(entry_id)
        if last_n is not None and len(rows) >= last_n:
            done = True
            break
    if archive is not None and not done:
        seen = {r["request_id"] for r in rows}
        for entry_id, rec in archived_records(archive.store, now_s=now, retention_s=archive.retention_s,
                                              before=StreamId.parse(oldest) if oldest else None,
                                              since_ms=int(cutoff * 1000) if cutoff else 0):
            if rec["kind"] != "primary" or rec["request_id"] in seen:
                continue
            if cutoff is not None and float(rec["ts"]) < cutoff:
                break
            seen.add(rec["request_id"])
            rows.append(_row(rec, float(rec["ts"])))
            ids.append(entry_id)
            if last_n is not None and len(rows) >= last_n:
                break
    rows.reverse()
    ids.reverse()
    frame = pd.DataFrame(rows, columns=list(schema.active().feature_names) + ANSWER_COLUMNS)
    return Window(frame=frame, first_id=ids[0] if ids else None, last_id=ids[-1] if ids else None,
                  first_ts=float(frame["ts"].min()) if len(frame) else None,
                  last_ts=float(frame["ts"].max()) if len(frame) else None)


SHADOW_COLUMNS = ["request_id", "ts", "variant", "model_version", "probability", "predicted", "agree"]


def read_shadow(redis: Any, prefix: str, *, since_wall: float, chunk: int = 5_000) -> pd.DataFrame:
    """The shadow answers logged since ``since_wall`` (unix seconds), oldest first: the shadow
    target's answer to a request the primary answered, and whether their decisions agreed."""
    rows: list[dict[str, Any]] = []
    # stream ids start with their millisecond time: nothing below the start is read
    for _, rec in _newest_first(redis, keys.stream(prefix), min_id=f"{int(since_wall * 1000)}-0", chunk=chunk):
        if rec.get("kind") != "shadow" or float(rec["ts"]) < since_wall:
            continue
        data = json.loads(rec["data"])
        rows.append({"request_id": rec["request_id"], "ts": float(rec["ts"]), "variant": data["variant"],
                     "model_version": str(data["model_version"]), "probability": float(data["probability"]),
                     "predicted": int(data["label"]), "agree": bool(data["agree"])})
    rows.reverse()
    return pd.DataFrame(rows, columns=SHADOW_COLUMNS)


def attach_labels(redis: Any, prefix: str, frame: pd.DataFrame, chunk: int = 2_000,
                  archive: ArchiveView | None = None) -> pd.DataFrame:
    """Add the label column from the feedback labels (NaN where none arrived), one HMGET per minute
    hash and chunk, all in one pipeline; with an archive, a request whose hash holds no label
    takes it from the feedback log (archived parts and the hot stream, ``resolve_labels``)."""
    out = frame.copy()
    if out.empty:
        out[schema.active().label] = pd.Series(dtype=float)
        return out
    by_key: dict[str, list[int]] = {}
    ids = list(out["request_id"])
    for i, rid in enumerate(ids):
        key = keys.bucket_key(prefix, rid)
        if key is not None:
            by_key.setdefault(key, []).append(i)
    pipe = redis.pipeline(transaction=False)
    calls: list[list[int]] = []
    for key, rows in by_key.items():
        for start in range(0, len(rows), chunk):
            part = rows[start:start + chunk]
            pipe.hmget(key, [keys.label_field(ids[i]) for i in part])
            calls.append(part)
    labels = np.full(len(ids), np.nan)
    for part, values in zip(calls, pipe.execute(), strict=True):
        for i, v in zip(part, values, strict=True):
            if v is not None:
                labels[i] = float(_s(v))
    if archive is not None and np.isnan(labels).any():
        _labels_from_log(redis, prefix, archive, ids, labels)
    out[schema.active().label] = labels
    return out


def _labels_from_log(redis: Any, prefix: str, archive: ArchiveView, ids: list[str], labels: np.ndarray) -> None:
    """Fill the missing labels from the feedback log: a label arrives after its answer, so only
    label parts from the oldest missing answer on are read."""
    missing = [i for i in range(len(ids)) if np.isnan(labels[i])]
    answered = [t for i in missing if (t := keys.answered_at(ids[i])) is not None]
    since_ms = int(min(answered) * 1000) if answered else 0
    merged = dict(archived_labels(archive.store, now_s=time.time(), retention_s=archive.retention_s,
                                  since_ms=since_ms))
    merged.update(feedback_entries(redis, prefix))  # hot and archived overlap: one entry per stream id
    resolved = resolve_labels([merged[sid] for sid in sorted(merged)])
    for i in missing:
        if ids[i] in resolved:
            labels[i] = float(resolved[ids[i]])


def labelled(frame: pd.DataFrame) -> pd.DataFrame:
    out = frame[frame[schema.active().label].notna()].copy()
    out[schema.active().label] = out[schema.active().label].astype(int)
    return out
