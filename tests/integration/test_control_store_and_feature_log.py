"""``ControlStore.change`` and ``FeatureLog`` against a real Redis (the session's own
redis-server on a free port; each test under its own key prefix), without a gateway: the
compare-and-set, the audit, the spool and its replay, labels and their retention."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from healmesh.control import keys
from healmesh.control.state import (
    ChangeConflict,
    Rollout,
    RolloutConflict,
    RolloutRejected,
    RolloutStatus,
)
from healmesh.control.store import ControlStore
from healmesh.gateway.feature_log import FeatureLog, LabelResult, LogRecord
from healmesh.policies import routing

from .conftest import start_redis

pytestmark = pytest.mark.integration


@pytest.fixture
def prefix() -> str:
    return f"hm-unit-{uuid.uuid4().hex[:8]}"


def client(port: int) -> aioredis.Redis:
    return aioredis.Redis(port=port, socket_timeout=2, socket_connect_timeout=2)


def running(version: str, stage: int = 10) -> Rollout:
    return Rollout(stage=stage, canary_version=version, status=RolloutStatus.RUNNING)


# --- ControlStore.change ------------------------------------------------------------------------


def test_a_change_bumps_the_version_and_is_audited_once(redis_srv, prefix):
    async def go() -> tuple[Any, Any, list[dict[str, Any]]]:
        store = ControlStore(client(redis_srv.port), prefix)
        first = await store.change("weights", {"xgboost_stable": 1, "pytorch": 1}, who="t", why="50/50")
        read = await store.read()
        audit = await store.audit()
        await store.redis.aclose()
        return first, read, audit

    first, read, audit = asyncio.run(go())
    assert first.version == read.version == 1 and read.weights.get(routing.PYTORCH) == pytest.approx(0.5)
    assert len(audit) == 1
    assert (audit[0]["what"], audit[0]["who"], audit[0]["why"], audit[0]["version"]) == ("weights", "t", "50/50", 1)
    assert audit[0]["after"]["pytorch"] == pytest.approx(0.5)


def test_the_shadow_phase_reaches_redis_with_its_mirror_and_leaving_it_stops_the_mirror(redis_srv, prefix):
    """What a worker routes by is what it reads back from Redis: the rollout change into the shadow
    phase must store the mirror with it (a first wiring stored only rollout and weights, and no
    shadow call was ever made: the lifecycle's shadow stage saw 0 canary calls in 120 s)."""
    async def go() -> tuple[Any, Any]:
        store = ControlStore(client(redis_srv.port), prefix)
        await store.change("rollout", Rollout(0, "5", RolloutStatus.SHADOW), who="t", why="shadow")
        shadowing = await store.read()
        await store.change("rollout", running("5"), who="t", why="stage 10")
        first_stage = await store.read()
        await store.redis.aclose()
        return shadowing, first_stage

    shadowing, first_stage = asyncio.run(go())
    assert shadowing.rollout.status is RolloutStatus.SHADOW
    assert shadowing.shadow.enabled and shadowing.shadow.target == routing.XGB_CANARY
    assert first_stage.rollout.stage == 10 and not first_stage.shadow.enabled


def test_an_expected_version_that_is_not_the_current_one_changes_nothing(redis_srv, prefix):
    async def go() -> tuple[Any, list[dict[str, Any]]]:
        store = ControlStore(client(redis_srv.port), prefix)
        await store.change("weights", {"xgboost_stable": 1, "pytorch": 1}, who="a", why="v1")
        with pytest.raises(ChangeConflict, match="version 1, not the expected 0"):
            await store.change("weights", {"xgboost_stable": 1}, who="b", why="stale", expected_version=0)
        ok = await store.change("weights", {"xgboost_stable": 3, "pytorch": 1}, who="c", why="fresh",
                                expected_version=1)
        assert ok.version == 2
        read, audit = await store.read(), await store.audit()
        await store.redis.aclose()
        return read, audit

    read, audit = asyncio.run(go())
    assert read.version == 2 and read.weights.get(routing.XGB_STABLE) == pytest.approx(0.75)
    assert [a["why"] for a in audit] == ["fresh", "v1"]  # the refused change left no audit entry


@pytest.mark.parametrize("change,error", [
    (Rollout(stage=43, canary_version="2", status=RolloutStatus.RUNNING), RolloutRejected),  # not a stage
    (Rollout(stage=10, canary_version="2", status=RolloutStatus.PROMOTED), RolloutRejected),  # resting at 10
    (running("3"), RolloutConflict),  # another version while v2 runs
])
def test_an_illegal_rollout_change_is_refused_and_leaves_state_and_audit_alone(redis_srv, prefix, change, error):
    async def go() -> tuple[Any, Any, int]:
        store = ControlStore(client(redis_srv.port), prefix)
        await store.change("rollout", running("2"), who="dag", why="stage 10")
        before = await store.read()
        with pytest.raises(error):
            await store.change("rollout", change, who="x", why="illegal")
        after = await store.read()
        audited = len(await store.audit())
        await store.redis.aclose()
        return before, after, audited

    before, after, audited = asyncio.run(go())
    assert after == before and after.rollout.canary_version == "2" and audited == 1


def test_concurrent_writers_on_their_own_connections_lose_no_update(redis_srv, prefix):
    """Two stores (two processes' worth: one connection each) flip the shadow 2 x 40 times at once:
    every change lands on the one before it, so the version counts them all and so does the audit."""
    n = 40

    async def writer(store: ControlStore, who: str) -> list[int]:
        out = []
        for i in range(n):
            state = await store.change("weights", {"xgboost_stable": 1 + i, "pytorch": 1}, who=who, why=str(i))
            out.append(state.version)
        return out

    async def go() -> tuple[list[int], list[int], Any, list[dict[str, Any]]]:
        a, b = ControlStore(client(redis_srv.port), prefix), ControlStore(client(redis_srv.port), prefix)
        va, vb = await asyncio.gather(writer(a, "a"), writer(b, "b"))
        read, audit = await a.read(), await a.audit(limit=1_000)
        await a.redis.aclose()
        await b.redis.aclose()
        return va, vb, read, audit

    va, vb, read, audit = asyncio.run(go())
    assert read.version == 2 * n
    assert sorted(va + vb) == list(range(1, 2 * n + 1))  # each change got its own version
    assert len(audit) == 2 * n and sorted(a["version"] for a in audit) == list(range(1, 2 * n + 1))


# --- FeatureLog ----------------------------------------------------------------------------------


def record(now: float, i: int = 0) -> LogRecord:
    rid = keys.new_request_id(now)
    return LogRecord(rid, "primary", f"{now:.3f}", {"i": i, "variant": "xgboost_stable"})


def feature_log(redis: Any, prefix: str, spool: Path | None = None, retention_s: float = 3600) -> FeatureLog:
    return FeatureLog(redis, prefix, retention_s=retention_s, maxlen=100_000, buffer_max=10_000, batch_size=50,
                      flush_interval_s=0.01, spool_dir=spool)


async def until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(0.02)


def test_records_are_written_once_each_in_order(redis_srv, prefix, tmp_path):
    async def go() -> tuple[list[Any], FeatureLog, list[LogRecord]]:
        r = client(redis_srv.port)
        log = feature_log(r, prefix, tmp_path / "spool")
        log.start()
        recs = [record(time.time(), i) for i in range(120)]
        for rec in recs:
            assert log.append(rec)
        await until(lambda: log.stats.written == 120, 10, "120 records written")
        # a retried batch (a broken connection after the write) writes nothing twice
        assert await log._write_batch(recs[:50]) == 0
        await log.stop()
        entries = await r.xrange(keys.stream(prefix))
        await r.aclose()
        return entries, log, recs

    entries, log, recs = asyncio.run(go())
    assert [f[b"request_id"].decode() for _, f in entries] == [r.request_id for r in recs]
    assert [json.loads(f[b"data"])["i"] for _, f in entries] == list(range(120))
    assert log.stats.dropped == 0 and log.stats.spilled == 0


def test_records_accepted_while_redis_is_down_are_spooled_and_replayed_once(session_dir, prefix, tmp_path):
    server = start_redis(session_dir, persist=True)  # what it held before the outage survives it
    port = server.port
    spool = tmp_path / "spool"

    async def go() -> tuple[list[Any], FeatureLog, list[LogRecord]]:
        r = client(port)
        log = feature_log(r, prefix, spool)
        log.start()
        first = [record(time.time(), i) for i in range(30)]
        for rec in first:
            log.append(rec)
        await until(lambda: log.stats.written == 30, 10, "the first records written")
        server.stop()
        during = [record(time.time(), 30 + i) for i in range(70)]
        for rec in during:
            assert log.append(rec)
        await until(lambda: log.stats.spilled == 70 and not log.stats.redis_up, 15, "the records spooled")
        assert log.buffered == 0 and any(spool.glob("*.jsonl"))  # on disk, not in memory
        server.start()
        server.wait_ready(timeout=20)
        await until(lambda: log.stats.redis_up and log.stats.replayed == 70, 30, "the spool replayed")
        after = [record(time.time(), 100 + i) for i in range(10)]
        for rec in after:
            log.append(rec)
        await until(lambda: log.stats.written == 110, 10, "the later records written")
        await log.stop()
        entries = await r.xrange(keys.stream(prefix))
        await r.aclose()
        return entries, log, first + during + after

    try:
        entries, log, recs = asyncio.run(go())
    finally:
        server.stop()
    assert [f[b"request_id"].decode() for _, f in entries] == [r.request_id for r in recs]  # each once, in order
    assert log.stats.dropped == 0 and log.stats.flush_errors > 0
    assert not list(spool.glob("*.jsonl"))  # replayed files are gone


def test_a_spool_a_stopped_process_left_is_replayed_at_the_next_start(redis_srv, prefix, tmp_path):
    """At shutdown with Redis away the buffer goes to the spool; the next start writes it."""
    spool = tmp_path / "spool"

    async def go() -> tuple[int, list[Any], list[LogRecord]]:
        unreachable = aioredis.Redis(port=1, socket_connect_timeout=0.2)  # nothing listens on port 1
        gone = feature_log(unreachable, prefix, spool)
        recs = [record(time.time(), i) for i in range(25)]
        for rec in recs:
            gone.append(rec)
        await gone.stop(drain_timeout_s=0.1)  # never started: everything buffered is spooled
        spilled = gone.stats.spilled
        r = client(redis_srv.port)
        log = feature_log(r, prefix, spool)
        log.start()
        await until(lambda: log.stats.replayed == 25, 10, "the spool replayed")
        await log.stop()
        entries = await r.xrange(keys.stream(prefix))
        await r.aclose()
        return spilled, entries, recs

    spilled, entries, recs = asyncio.run(go())
    assert spilled == 25
    assert [f[b"request_id"].decode() for _, f in entries] == [r.request_id for r in recs]


def test_labels_join_their_request_once_and_a_correction_is_audited(redis_srv, prefix):
    async def go() -> dict[str, Any]:
        r = client(redis_srv.port)
        log = feature_log(r, prefix)
        rec = record(time.time())
        assert await log._write_batch([rec]) == 1
        rid = rec.request_id
        out = {
            "unknown": await log.label(keys.new_request_id(time.time()), 1),
            "not_ours": await log.label("../../x", 1),
            "stored": await log.label(rid, 1),
            "again": await log.label(rid, 1),
            "other": await log.label(rid, 0),
            "corrected": await log.correct(rid, 0, who="ops", why="chargeback reversed"),
            "corrected_again": await log.correct(rid, 0, who="ops", why="twice"),
            "batch": await log.labels([(rid, 0), (keys.new_request_id(time.time()), 0)]),
        }
        out["stored_label"] = await r.hget(keys.bucket_key(prefix, rid), keys.label_field(rid))
        out["feedback"] = [f for _, f in await r.xrange(keys.feedback_stream(prefix))]
        out["audit"] = [f for _, f in await r.xrange(f"{prefix}:audit")]
        await r.aclose()
        return out

    out = asyncio.run(go())
    assert out["unknown"] is LabelResult.UNKNOWN and out["not_ours"] is LabelResult.UNKNOWN
    assert (out["stored"], out["again"], out["other"]) == (LabelResult.STORED, LabelResult.UNCHANGED,
                                                           LabelResult.CONFLICT)
    assert (out["corrected"], out["corrected_again"]) == (LabelResult.CORRECTED, LabelResult.UNCHANGED)
    assert out["batch"] == [LabelResult.UNCHANGED, LabelResult.UNKNOWN]
    assert out["stored_label"] == b"0"
    assert [(f[b"label"], f.get(b"correction")) for f in out["feedback"]] == [(b"1", None), (b"0", b"1")]
    assert len(out["audit"]) == 1 and out["audit"][0][b"who"] == b"ops"
    assert json.loads(out["audit"][0][b"before"])["label"] == 1 and json.loads(out["audit"][0][b"after"])["label"] == 0


def test_a_label_past_the_retention_is_expired_and_not_stored(redis_srv, prefix):
    retention = 60.0

    async def go() -> tuple[LabelResult, LabelResult, LabelResult, int]:
        r = client(redis_srv.port)
        log = feature_log(r, prefix, retention_s=retention)
        now = time.time()
        old, fresh = record(now - retention - 5), record(now - retention + 30)
        await log._write_batch([old, fresh])
        results = (await log.label(old.request_id, 1), await log.label(fresh.request_id, 1),
                   await log.correct(old.request_id, 0, who="ops", why="too late"))
        stored = await r.xlen(keys.feedback_stream(prefix))
        await r.aclose()
        return (*results, stored)

    old, fresh, corrected, stored = asyncio.run(go())
    assert old is LabelResult.EXPIRED and corrected is LabelResult.EXPIRED
    assert fresh is LabelResult.STORED and stored == 1


def test_the_window_and_the_shadow_answers_read_the_same_across_page_sizes(redis_srv, prefix):
    """The drift check and the canary judge read the feature log newest first in pages: a page
    smaller than the stream must give the same records, in order, as one page."""
    import redis as redis_sync

    from healmesh import schema
    from healmesh.data import generate
    from healmesh.lifecycle.window import read_shadow, read_window

    r = redis_sync.Redis(port=redis_srv.port)
    features = {k: (v.item() if hasattr(v, "item") else v)
                for k, v in generate(1, seed=3)[list(schema.active().feature_names)].iloc[0].to_dict().items()}
    now = time.time()
    start = now - 60  # 60 records a second apart, ending now; every third one a shadow answer
    for i in range(60):
        ts = start + i
        kind = "shadow" if i % 3 == 2 else "primary"
        answer = {"variant": "xgboost_canary" if kind == "shadow" else "xgboost_stable", "model": "xgboost",
                  "model_version": "1", "probability": i / 100, "label": i % 2}
        data = {**answer, "agree": i % 2 == 0} if kind == "shadow" else {**answer, "features": features}
        r.xadd(keys.stream(prefix), {"request_id": f"req-{i}", "kind": kind, "ts": f"{ts:.3f}",
                                     "data": json.dumps(data)}, id=f"{int(ts * 1000)}-0")
    primaries = [f"req-{i}" for i in range(60) if i % 3 != 2]
    for chunk in (7, 5_000):
        window = read_window(r, prefix, last_n=20, chunk=chunk).frame
        assert list(window["request_id"]) == primaries[-20:], chunk
        recent = read_window(r, prefix, last_n=None, since_s=30.5, chunk=chunk).frame
        assert list(recent["request_id"]) == [f"req-{i}" for i in range(30, 60) if i % 3 != 2], chunk
        mirrored = read_shadow(r, prefix, since_wall=start + 40.5, chunk=chunk)
        assert list(mirrored["request_id"]) == [f"req-{i}" for i in range(41, 60) if i % 3 == 2], chunk
        assert list(mirrored["agree"]) == [i % 2 == 0 for i in range(41, 60) if i % 3 == 2]
    r.close()
