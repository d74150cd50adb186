"""Tests healmesh.gateway.upstreams: outcomes, the coalescing upstream and its per-request deadlines, single flight."""

import asyncio
import json

from healmesh.gateway.upstreams import CallResult, Outcome, ScorerClient, Upstream, classify


def test_overload_is_not_failure():
    assert classify(503) is Outcome.OVERLOADED and classify(429) is Outcome.OVERLOADED
    assert classify(500) is Outcome.ERROR and classify(404) is Outcome.ERROR and classify(200) is Outcome.OK
    assert not Outcome.OVERLOADED.is_failure and Outcome.TIMEOUT.is_failure


def test_upstream_coalesces_concurrent_calls_and_splits_answers():
    import asyncio

    from healmesh.gateway.upstreams import CallResult, ScorerClient, Upstream

    sent: list[int] = []

    async def fake_predict(body: bytes, n: int, timeout_s: float) -> CallResult:
        rows = json.loads(body)["rows"]
        assert len(rows) == n
        sent.append(n)
        await asyncio.sleep(0.01)
        if any(r.get("fail") for r in rows):
            return CallResult(Outcome.ERROR, status=500)
        return CallResult(Outcome.OK, rows=[{"echo": r["i"]} for r in rows])

    async def scenario() -> None:
        up = Upstream("x", ScorerClient("http://127.0.0.1:9"), "/predict", max_in_flight=2, max_rows=8)
        up.predict = fake_predict  # type: ignore[method-assign]
        results = await asyncio.gather(*(up.call([json.dumps({"i": i}).encode()], 1.0) for i in range(20)))
        assert [r.rows[0]["echo"] for r in results] == list(range(20))  # each caller gets its own row
        assert len(sent) < 20 and max(sent) <= 8 and sum(sent) == 20
        sent.clear()
        bad = await asyncio.gather(up.call([b'{"i": 1, "fail": true}'], 1.0), up.call([b'{"i": 2}'], 1.0),
                                   up.call([b'{"i": 3}'], 1.0))
        assert bad[0].outcome is Outcome.ERROR
        expired = await up.call([b'{"i": 4}'], -1.0)
        assert expired.outcome is Outcome.TIMEOUT

    asyncio.run(scenario())


def test_concurrent_reads_share_one_call_in_flight():
    import asyncio

    from healmesh.gateway.upstreams import SingleFlight

    calls = []

    async def read() -> int:
        calls.append(1)
        await asyncio.sleep(0.05)
        return len(calls)

    async def main() -> tuple[list[int], int]:
        flight = SingleFlight()
        together = await asyncio.gather(*(flight.run("xgboost", read) for _ in range(50)))
        later = await flight.run("xgboost", read)  # the first call is done: a new one
        return list(together), later

    together, later = asyncio.run(main())
    assert together == [1] * 50 and later == 2 and len(calls) == 2


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
