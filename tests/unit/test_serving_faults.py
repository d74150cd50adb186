"""Tests healmesh.serving.faults: the fault config, the injector and the middleware."""

import asyncio
import random

import pytest

from healmesh.serving.faults import FaultConfig, FaultInjector, FaultMiddleware


def test_fault_config_validates_with_clear_messages():
    with pytest.raises(ValueError, match="error_rate must be in \\[0, 1\\], but was 1.5"):
        FaultConfig(error_rate=1.5)
    with pytest.raises(ValueError, match="status must be one of"):
        FaultConfig(status=404)
    with pytest.raises(ValueError, match="slot must be"):
        FaultConfig(slot="blue")  # type: ignore[arg-type]
    assert not FaultConfig().active
    assert FaultConfig(latency_ms=5).active


def test_injector_error_rate_and_slot_targeting():
    inj = FaultInjector(rng=random.Random(1))
    inj.set(FaultConfig(error_rate=0.3, slot="canary"))
    assert all(inj.decide("stable") == (0.0, None) for _ in range(200))
    fails = sum(inj.decide("canary")[1] == 500 for _ in range(2000))
    assert 500 < fails < 700
    assert inj.injected_errors == fails
    inj.clear()
    assert inj.decide("canary") == (0.0, None)


def _call(mw: FaultMiddleware, path: str) -> tuple[int, float]:
    sent = []

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    mw.app = app

    async def run():
        loop = asyncio.get_running_loop()
        t = loop.time()

        async def send(msg):
            sent.append(msg)

        async def receive():
            return {"type": "http.request", "body": b""}

        await mw({"type": "http", "path": path}, receive, send)
        return loop.time() - t

    took = asyncio.run(run())
    return sent[0]["status"], took


def test_middleware_fails_and_delays_only_predict_routes():
    inj = FaultInjector(rng=random.Random(2))
    mw = FaultMiddleware(None, routes={"/predict": "stable"}, injector=inj)  # type: ignore[arg-type]
    inj.set(FaultConfig(error_rate=1.0, status=503))
    assert _call(mw, "/predict")[0] == 503
    assert _call(mw, "/readyz")[0] == 200
    inj.set(FaultConfig(latency_ms=120))
    status, took = _call(mw, "/predict")
    assert status == 200 and took >= 0.11


def test_garbage_answers_come_at_their_rate_and_only_on_their_slot():
    import pytest

    from healmesh.serving.faults import FaultConfig, FaultInjector

    inj = FaultInjector()
    inj.set(FaultConfig(garbage_rate=0.5, slot="stable", seed=3))
    assert inj.config.active
    assert not any(inj.garbage("canary") for _ in range(200))
    share = sum(inj.garbage("stable") for _ in range(2000)) / 2000
    assert 0.45 < share < 0.55
    with pytest.raises(ValueError, match="garbage_rate"):
        FaultConfig(garbage_rate=1.5)
