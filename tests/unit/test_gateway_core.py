"""A coalesced call that fails: every request it carried gets the failure, goes on through the
chain, and nothing hangs. Real HTTP on 127.0.0.1 (a tiny aiohttp server started in the test),
no mocks of the transport."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from typing import Any

import pytest
import redis.asyncio as aioredis
from aiohttp import web

from healmesh import schema
from healmesh.gateway.core import GatewayCore
from healmesh.gateway.metrics import GatewayMetrics
from healmesh.gateway.upstreams import CallResult, Outcome, ScorerClient, Upstream
from healmesh.ops import procs
from healmesh.policies import routing
from healmesh.settings import Settings

N = 10
GUARD_S = 30.0  # a hang fails the test instead of blocking the run


class Scorer:
    """A scorer on a free port: answers every row (``ok``), a 500 (``error``), or nothing until
    the test ends (``hang``). Counts the rows of each call it receives."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.calls: list[int] = []
        self.release = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def _predict(self, request: web.Request) -> web.Response:
        rows = (await request.json())["rows"]
        self.calls.append(len(rows))
        if self.mode == "hang":
            await self.release.wait()
        if self.mode != "ok":
            return web.Response(status=500, text="model exploded")
        return web.json_response([{"probability": 0.1, "label": 0, "model": "rules", "model_version": "r1"}
                                  for _ in rows])

    async def __aenter__(self) -> Scorer:
        app = web.Application()
        app.router.add_post("/predict", self._predict)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release.set()  # let hanging handlers return, so the server stops at once
        assert self._runner is not None
        await self._runner.cleanup()


def refused_url() -> str:
    """An address where nothing listens (connection refused)."""
    return f"http://127.0.0.1:{procs.free_port()}"


FAILURES = [("error", Outcome.ERROR), ("hang", Outcome.TIMEOUT), ("refused", Outcome.UNREACHABLE)]


@pytest.mark.parametrize("mode,outcome", FAILURES)
def test_every_request_of_a_failed_coalesced_call_gets_the_failure(mode: str, outcome: Outcome) -> None:
    async def scenario() -> None:
        async with Scorer("hang" if mode == "hang" else "error") as scorer:
            client = ScorerClient(refused_url() if mode == "refused" else scorer.url)
            heard: list[CallResult] = []
            up = Upstream("x", client, "/predict", max_in_flight=1, max_rows=64, on_call=heard.append)
            # the first request goes out alone; the others queue behind it and leave as one call.
            # With a hanging scorer the first gives up early and the batch waits until its own deadline.
            timeouts = [0.2] + [1.0] * (N - 1) if mode == "hang" else [5.0] * N
            rows = [[json.dumps({"i": i}).encode()] for i in range(N)]
            results = await asyncio.wait_for(
                asyncio.gather(*(up.call(r, t) for r, t in zip(rows, timeouts, strict=True))), GUARD_S)
            await client.close()
        assert [r.outcome for r in results] == [outcome] * N
        assert all(r.rows is None for r in results)
        assert 1 < len(heard) < N and {h.outcome for h in heard} == {outcome}  # one verdict per call
        if mode != "refused":
            assert sum(scorer.calls) == N and max(scorer.calls) > 1 and len(scorer.calls) == len(heard)

    asyncio.run(scenario())


class Series:
    def __init__(self, values: dict[tuple[str, tuple[str, ...]], float], name: str,
                 labels: tuple[str, ...] = ()) -> None:
        self.values, self.name, self.label_values = values, name, labels

    def labels(self, *labels: str) -> Series:
        return Series(self.values, self.name, labels)

    def inc(self, n: float = 1.0) -> None:
        self.values[(self.name, self.label_values)] += n

    def observe(self, _value: float) -> None:
        self.values[(self.name + "_count", self.label_values)] += 1

    def set(self, value: float) -> None:
        self.values[(self.name, self.label_values)] = value


class Metrics:
    """What the gateway publishes, by series name and labels."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, tuple[str, ...]], float] = defaultdict(float)

    # the gateway's own method, over these recorded series
    upstream_call = GatewayMetrics.upstream_call

    def __getattr__(self, name: str) -> Any:
        return Series(self.values, name)

    def total(self, name: str, **match: str) -> float:
        return sum(v for (n, labels), v in self.values.items()
                   if n == name and all(m in labels for m in match.values()))


@pytest.mark.parametrize("mode,outcome", FAILURES)
def test_requests_of_a_failed_coalesced_call_go_on_to_the_fallback_scorer(mode: str, outcome: Outcome) -> None:
    async def scenario() -> tuple[list[Any], Metrics, GatewayCore, Scorer]:
        async with Scorer("hang" if mode == "hang" else "error") as bad, Scorer("ok") as good:
            model_url = refused_url() if mode == "refused" else bad.url
            metrics = Metrics()
            # never reached: the feature log is not started, the control state not read
            redis = aioredis.Redis(host="127.0.0.1", port=int(refused_url().rsplit(":", 1)[1]))
            core = GatewayCore(Settings(), {"xgboost": model_url, "pytorch": model_url, "fallback": good.url},
                               metrics, redis)
            for up in core.upstreams.values():
                up.max_in_flight = 1  # concurrent requests coalesce behind the first call
            try:
                rows = [schema.active().example_row() | {schema.active().entity_key: f"card-{i}"} for i in range(N)]
                answers = await asyncio.wait_for(
                    asyncio.gather(*(core.predict([row], row[schema.active().entity_key]) for row in rows)), GUARD_S)
            finally:
                for c in core.clients.values():
                    await c.close()
                await redis.aclose()
        return [a for _, a in answers], metrics, core, bad

    answers, metrics, core, bad = asyncio.run(scenario())
    for a in answers:
        assert (a.variant, a.fallback, a.degraded) == (routing.FALLBACK, True, False)
        assert a.attempts[-1] == (routing.FALLBACK, "ok")
        variants = a.attempts[:-1]
        assert 1 <= len(variants) <= 2 and {o for _, o in variants} == {outcome.value}
        assert {u for u, _ in variants} <= set(routing.VARIANTS)
    assert core.in_flight == 0
    if mode == "error":
        assert max(bad.calls) > 1  # the failed calls were coalesced ones
    # (hanging: the requests queued behind the first call reach their deadline in the queue, as
    # they all have the same; the coalesced call that times out is the test above)
    # every request published once, every call it made too
    assert metrics.total("requests", outcome="fallback") == N
    assert metrics.total("upstream_calls", upstream=routing.FALLBACK, result="ok") == N
    assert metrics.total("upstream_calls", result=outcome.value) == sum(len(a.attempts) - 1 for a in answers)
    assert metrics.total("retries", decision="allowed") == sum(len(a.attempts) == 3 for a in answers)
