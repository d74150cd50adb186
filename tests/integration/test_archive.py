"""The durable feature log against a real Redis and real stores: a local folder and an
S3-compatible server (moto's, started here on 127.0.0.1 and stopped after).

Rows and labels outlive Redis's hot window: they are archived, Redis trims them (the same XTRIM
MINID the gateway's writes run once the window has passed, here called directly so the test
does not wait on a clock), labels for them arrive late (cold), and the label join, the window
and the retraining's training set read them back from the archive plus the hot window, each
request once. Archiving is exactly once, in order, across a crash after any part."""

from __future__ import annotations

import asyncio
import calendar
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
import redis as redis_sync
import redis.asyncio as aioredis

from healmesh import schema
from healmesh.control import keys
from healmesh.control.lease import LeaseStore
from healmesh.data import generate
from healmesh.data.objects import ObjectStore, open_store
from healmesh.gateway.feature_log import FeatureLog, LabelResult, LogRecord
from healmesh.lifecycle.archive import Archiver, archive_once, decode_part
from healmesh.lifecycle.retrain import build_training_set, recent_labelled
from healmesh.lifecycle.window import attach_labels, read_window
from healmesh.ops import procs
from healmesh.policies.archive import StreamId, part_key, part_range
from healmesh.policies.rollout import Lease
from healmesh.settings import ArchiveConfig, RetrainConfig, Settings

pytestmark = pytest.mark.integration

HOT_S = 60  # Redis's hot window (label_retention_s)
COLD_S = 86_400  # the archive's retention in these tests
CREDS = {"access_key_id": "testing-key", "secret_access_key": "testing-secret"}


@pytest.fixture(scope="module")
def moto_url(session_dir: Path) -> Iterator[str]:
    port = procs.free_port()
    with open(session_dir / f"moto-{port}.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, "moto's server exited"
            try:
                httpx.get(url + "/moto-api/", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "moto's server did not answer in 30 s"
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(params=["file", "s3"])
def archive_config(request, tmp_path) -> ArchiveConfig:
    if request.param == "file":
        return ArchiveConfig(url=(tmp_path / "archive").as_uri(), retention_s=COLD_S, batch_rows=50)
    import boto3

    endpoint = request.getfixturevalue("moto_url")
    bucket = f"hm-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=CREDS["access_key_id"],
                 aws_secret_access_key=CREDS["secret_access_key"]).create_bucket(Bucket=bucket)
    return ArchiveConfig(url=f"s3://{bucket}/healmesh", endpoint_url=endpoint, retention_s=COLD_S, batch_rows=50,
                         **CREDS)


@pytest.fixture
def settings(archive_config: ArchiveConfig) -> Settings:
    return Settings(key_prefix=f"hm-arch-{uuid.uuid4().hex[:8]}", label_retention_s=HOT_S, archive=archive_config,
                    retrain=RetrainConfig(min_labels=10, min_positives=2))


def store_of(settings: Settings) -> ObjectStore:
    a = settings.archive
    secret = a.secret_access_key.get_secret_value() if a.secret_access_key else None
    return open_store(settings.archive_url, endpoint_url=a.endpoint_url, access_key_id=a.access_key_id,
                      secret_access_key=secret)


def feature_log(r: Any, settings: Settings) -> FeatureLog:
    return FeatureLog(r, settings.key_prefix, retention_s=settings.label_retention_s, maxlen=100_000,
                      buffer_max=10_000, batch_size=50, flush_interval_s=0.01, cold_retention_s=settings.label_limit_s)


def records(answered_at: float, n: int, seed: int) -> list[LogRecord]:
    frame = generate(n, seed=seed)
    out = []
    for i, row in enumerate(frame[list(schema.active().feature_names)].to_dict("records")):
        feats = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
        out.append(LogRecord(keys.new_request_id(answered_at + i * 0.001), "primary", f"{answered_at:.3f}",
                             {"features": feats, "variant": "xgboost_stable", "model": "xgboost",
                              "model_version": "1", "probability": 0.1, "label": 0}))
    return out


def trim_before(r: redis_sync.Redis, key: str, first_kept: str) -> None:
    """What the gateway's next write does once the hot window has passed the entries before
    ``first_kept`` (XADD ... MINID): they leave Redis."""
    r.xtrim(key, minid=first_kept, approximate=False)


def test_labels_past_the_hot_window_join_through_the_archive_and_retraining_uses_them(redis_srv, settings):
    sync = redis_sync.Redis(port=redis_srv.port)
    prefix = settings.key_prefix
    now = time.time()
    old = records(now - 600, 40, seed=1)  # answered ten minutes ago: past the 60 s hot window
    fresh = records(now, 10, seed=2)
    labels_old = [(rec.request_id, int(i % 3 == 0)) for i, rec in enumerate(old)]

    async def log_and_label(phase: str) -> list[LabelResult]:
        r = aioredis.Redis(port=redis_srv.port)
        log = feature_log(r, settings)
        try:
            if phase == "log_old":
                assert await log._write_batch(old) == 40
                return []
            if phase == "log_fresh":
                assert await log._write_batch(fresh) == 10
                return []
            never_logged = keys.new_request_id(now - 600)
            too_old = keys.new_request_id(now - 2 * COLD_S)
            return await log.labels([*labels_old,
                                     (old[0].request_id, 1),  # a repeat
                                     (old[1].request_id, 1),  # a conflict: the first label (0) stands
                                     (never_logged, 1), (too_old, 1),
                                     *[(rec.request_id, 1) for rec in fresh]])  # hot
        finally:
            await r.aclose()

    asyncio.run(log_and_label("log_old"))
    asyncio.run(log_and_label("log_fresh"))
    first_fresh = next(i for i, f in sync.xrange(keys.stream(prefix))
                       if f[b"request_id"].decode() == fresh[0].request_id)
    archive_once(settings, sync)
    trim_before(sync, keys.stream(prefix), first_fresh.decode())  # the old rows are gone from Redis
    assert sync.xlen(keys.stream(prefix)) == 10

    results = asyncio.run(log_and_label("label"))
    assert results[:42] == [LabelResult.STORED_COLD] * 42
    assert results[42:44] == [LabelResult.STORED_COLD, LabelResult.EXPIRED]  # never logged: joins nothing
    assert results[44:] == [LabelResult.STORED] * 10
    view = archive_once(settings, sync)
    assert view is not None
    trim_before(sync, keys.feedback_stream(prefix), f"{int(time.time() * 1000) + 1}-0")  # labels gone too
    assert sync.xlen(keys.feedback_stream(prefix)) == 0

    # the window: 10 hot rows, 40 from the archive, each request once, oldest first
    window = read_window(sync, prefix, last_n=1_000, archive=view).frame
    assert list(window["request_id"]) == [rec.request_id for rec in old + fresh]
    hot_only = attach_labels(sync, prefix, read_window(sync, prefix, last_n=1_000).frame)
    assert len(hot_only) == 10  # without the archive the old rows are gone, and their labels with them

    # the retraining's own reading: archived rows with their late labels, the first label standing
    win, recent = recent_labelled(settings, sync, window_records=1_000)
    assert win.describe()["records"] == 50
    got = dict(zip(recent["request_id"], recent[schema.active().label], strict=True))
    assert got == {**dict(labels_old), **{rec.request_id: 1 for rec in fresh}}
    reference = generate(200, seed=9)
    data = build_training_set(recent, reference, settings, seed=0)
    used = pd.concat([data.train, data.val, data.holdout])
    key_cols = list(schema.active().feature_names)
    used_keys = {tuple(v) for v in used[key_cols].astype(str).to_numpy()}
    for rec, (_, label) in zip(old, labels_old, strict=True):
        row = tuple(str(pd.Series(rec.data["features"])[c]) for c in key_cols)
        assert row in used_keys, f"archived row {rec.request_id} (label {label}) missing from the training set"
    assert data.recent_rows == 50


def test_archiving_is_exactly_once_and_in_order_across_a_crash_after_a_part(redis_srv, settings):
    sync = redis_sync.Redis(port=redis_srv.port)
    prefix = settings.key_prefix
    store = store_of(settings)
    stream = keys.stream(prefix)
    for i in range(170):
        sync.xadd(stream, {"request_id": f"r{i}", "kind": "primary", "ts": "1.0", "data": json.dumps({"i": i})})

    def crash_on_third(key: str) -> None:
        crash_on_third.puts += 1  # type: ignore[attr-defined]
        if crash_on_third.puts == 3:  # type: ignore[attr-defined]
            raise SystemExit("killed after writing a part, before anything else")
    crash_on_third.puts = 0  # type: ignore[attr-defined]

    def archiver(**kw: Any) -> Archiver:
        return Archiver(sync, prefix, store, batch_rows=50, retention_s=COLD_S, lease_ttl_s=30, **kw)

    with pytest.raises(SystemExit):
        archiver(after_put=crash_on_third).run_once()
    assert len(store.list("features/")) == 3  # three parts of 50 written, the third just before the crash
    assert LeaseStore(sync, prefix, key=keys.archive_lease(prefix)).current() is None  # released on the way out
    again = archiver().run_once()
    assert [s.rows for s in again.streams] == [20, 0]
    for i in range(170, 200):
        sync.xadd(stream, {"request_id": f"r{i}", "kind": "primary", "ts": "1.0", "data": json.dumps({"i": i})})
    assert [s.rows for s in archiver().run_once().streams] == [30, 0]
    assert [s.rows for s in archiver().run_once().streams] == [0, 0]  # nothing new: nothing written

    parts = sorted(store.list("features/"), key=lambda k: part_range(k)[0])  # type: ignore[index]
    rows = [row for k in parts for row in decode_part(store.get(k)).to_pylist()]
    assert [r["request_id"] for r in rows] == [f"r{i}" for i in range(200)]  # each once, in order
    assert [r["stream_id"] for r in rows] == [i.decode() for i, _ in sync.xrange(stream)]


def test_a_second_archiver_waits_for_the_lease_and_a_trimmed_gap_is_reported(redis_srv, settings):
    sync = redis_sync.Redis(port=redis_srv.port)
    prefix = settings.key_prefix
    store = store_of(settings)
    stream = keys.stream(prefix)
    ids = [sync.xadd(stream, {"request_id": f"r{i}", "kind": "primary", "ts": "1.0", "data": "{}"}).decode()
           for i in range(10)]
    leases = LeaseStore(sync, prefix, key=keys.archive_lease(prefix))
    leases.acquire(Lease(holder="archiver/elsewhere", version=None, since=time.time()), 30)
    blocked = Archiver(sync, prefix, store, batch_rows=50, retention_s=COLD_S, lease_ttl_s=30).run_once()
    assert not blocked.took_lease and store.list("features/") == []
    leases.release("archiver/elsewhere")
    first = Archiver(sync, prefix, store, batch_rows=50, retention_s=COLD_S, lease_ttl_s=30).run_once()
    assert first.streams[0].rows == 10 and not first.streams[0].lost
    more = [sync.xadd(stream, {"request_id": f"s{i}", "kind": "primary", "ts": "1.0", "data": "{}"}).decode()
            for i in range(5)]
    trim_before(sync, stream, more[3])  # Redis dropped s0..s2 before the archiver came back
    late = Archiver(sync, prefix, store, batch_rows=50, retention_s=COLD_S, lease_ttl_s=30).run_once()
    assert late.streams[0].lost and late.streams[0].rows == 2
    assert StreamId.parse(ids[-1]) < StreamId.parse(more[3])


def test_old_records_land_in_the_partition_of_their_hour(redis_srv, settings):
    sync = redis_sync.Redis(port=redis_srv.port)
    prefix = settings.key_prefix
    store = store_of(settings)
    t = calendar.timegm((2026, 12, 1, 23, 59, 59)) * 1000
    for ms in (t, t + 1, t + 2_000):  # two in 23:00 of the 1st, one in 00:00 of the 2nd
        sync.xadd(keys.stream(prefix), {"request_id": str(ms), "kind": "primary", "ts": "1.0", "data": "{}"},
                  id=f"{ms}-0")
    clock = lambda: t / 1000 + 3_600  # noqa: E731  (an hour later)
    Archiver(sync, prefix, store, batch_rows=50, retention_s=COLD_S, lease_ttl_s=30, clock=clock).run_once()
    names = store.list("features/")
    assert [n.rsplit("/", 1)[0] for n in names] == ["features/dt=2026-12-01/hour=23", "features/dt=2026-12-02/hour=00"]


def test_days_past_the_retention_are_deleted_and_newer_ones_kept(redis_srv, settings):
    sync = redis_sync.Redis(port=redis_srv.port)
    store = store_of(settings)
    now = calendar.timegm((2026, 12, 10, 12, 0, 0))
    old = calendar.timegm((2026, 12, 8, 5, 0, 0)) * 1000  # wholly before the 1-day retention's cutoff day
    kept = calendar.timegm((2026, 12, 9, 13, 0, 0)) * 1000  # inside the retention
    for ms in (old, kept):
        for stream in ("features", "labels"):
            store.put(part_key(stream, StreamId(ms, 0), StreamId(ms, 1)), b"x")
    run = Archiver(sync, settings.key_prefix, store, batch_rows=50, retention_s=COLD_S, lease_ttl_s=30,
                   clock=lambda: float(now)).run_once()
    assert run.pruned == 2
    assert [k.split("/")[1] for k in store.list("")] == ["dt=2026-12-09", "dt=2026-12-09"]
