"""The feature log's pure parts: request ids and key layout, the spool files, and the coalescing
upstream's per-call verdict and per-request deadlines."""

import asyncio
import json
import subprocess
import sys

from healmesh import logkeys
from healmesh.gateway.feature_log import LogRecord, Spool
from healmesh.gateway.upstreams import CallResult, Outcome, ScorerClient, Upstream


def test_request_ids_carry_their_answer_time_and_sort_by_it():
    a, b = logkeys.new_request_id(1_700_000_000.0), logkeys.new_request_id(1_700_000_000.5)
    assert len(a) == 32 and logkeys.REQUEST_ID.match(a) and a != logkeys.new_request_id(1_700_000_000.0)
    assert logkeys.answered_at(a) == 1_700_000_000.0 and a < b
    assert logkeys.answered_at("nope") is None and logkeys.bucket_key("p", "nope") is None
    assert logkeys.bucket_key("p", a) == f"p:req:{1_700_000_000 // 60}"


def test_a_minute_hash_outlives_its_last_answer_by_the_retention():
    ts = 1_700_000_059.9  # the last moment of its minute
    assert logkeys.bucket_expires_at(ts, 3600) - ts >= 3600
    assert logkeys.bucket_expires_at(1_700_000_040.0, 3600) == logkeys.bucket_expires_at(ts, 3600)
    assert logkeys.min_stream_id(1_700_000_000.0, 60) == "1699999940000-0"


def records(n: int, start: int = 0) -> list[LogRecord]:
    return [LogRecord(f"{i:032x}", "primary", "1.0", {"i": i}) for i in range(start, start + n)]


def test_spool_keeps_order_and_moves_its_active_file_aside_before_replaying(tmp_path):
    spool = Spool(tmp_path)
    spool.append(records(3))
    spool.append(records(2, start=3))
    files = spool.pending()
    assert len(files) == 1 and not spool.active.exists()  # appends from now on go to a new file
    spool.append(records(1, start=5))
    read = [r.data["i"] for batch in Spool.read(files[0], chunk=2) for r in batch]
    assert read == [0, 1, 2, 3, 4]
    assert oct(files[0].stat().st_mode & 0o777) == "0o600"


def test_a_dead_process_spool_is_claimed_a_live_one_is_not(tmp_path):
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / f"{done.stdout.strip()}-12345.active.jsonl"
    dead.write_bytes(b"".join(r.to_line() for r in records(2)))
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import psutil

        owner = f"{live.pid}-{int(psutil.Process(live.pid).create_time() * 1000)}"
        (tmp_path / f"{owner}.active.jsonl").write_bytes(records(1)[0].to_line())
        mine = Spool(tmp_path)
        claimed = mine.pending()
        assert len(claimed) == 1 and claimed[0].name.startswith(mine.owner)
        assert [r.data["i"] for b in Spool.read(claimed[0], 10) for r in b] == [0, 1]
        assert (tmp_path / f"{owner}.active.jsonl").exists()  # a live writer's file is its own
    finally:
        live.kill()


def test_a_torn_last_line_is_skipped(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(records(1)[0].to_line() + b'{"request_id": "ab')
    assert [r.request_id for b in Spool.read(path, 10) for r in b] == [f"{0:032x}"]


def run_upstream(fake, calls):
    async def scenario():
        seen: list[CallResult] = []
        up = Upstream("x", ScorerClient("http://127.0.0.1:9"), "/predict", max_in_flight=1, max_rows=64,
                      on_call=seen.append)
        up.predict = fake  # type: ignore[method-assign]
        results = await asyncio.gather(*(up.call([json.dumps({"i": i}).encode()], t) for i, t in calls))
        return results, seen

    return asyncio.run(scenario())


def test_a_coalesced_call_gets_one_verdict():
    async def failing(body, n, timeout_s):
        await asyncio.sleep(0.01)
        return CallResult(Outcome.ERROR, status=500)

    results, verdicts = run_upstream(failing, [(i, 2.0) for i in range(12)])
    assert all(r.outcome is Outcome.ERROR for r in results)
    assert 1 <= len(verdicts) < 12  # 12 requests, far fewer calls: the breaker hears each call once


def test_a_short_deadline_does_not_cut_the_call_the_others_wait_for():
    async def slow(body, n, timeout_s):
        slow.timeouts.append(timeout_s)
        await asyncio.sleep(0.3)
        return CallResult(Outcome.OK, rows=[{"ok": True}] * n)

    slow.timeouts = []

    async def scenario():
        up = Upstream("x", ScorerClient("http://127.0.0.1:9"), "/predict", max_in_flight=1, max_rows=64)
        up.predict = slow  # type: ignore[method-assign]
        first = asyncio.ensure_future(up.call([b"{}"], 5.0))  # occupies the only slot
        await asyncio.sleep(0)
        short = asyncio.ensure_future(up.call([b"{}"], 0.4))  # these two wait and leave together
        long = asyncio.ensure_future(up.call([b"{}"], 5.0))
        return await asyncio.gather(first, short, long)

    first, short, long = asyncio.run(scenario())
    assert first.outcome is Outcome.OK and long.outcome is Outcome.OK
    assert short.outcome is Outcome.TIMEOUT and "in flight" in short.detail
    # the shared call was given the latest member's deadline, not the shortest's
    assert len(slow.timeouts) == 2 and min(slow.timeouts) > 1.0
