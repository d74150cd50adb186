"""Tests healmesh.gateway.api: parsing a predict request body, and the worker header on every answer."""

import asyncio
import json
from types import SimpleNamespace

import pytest

from healmesh import schema
from healmesh.data import generate
from healmesh.gateway import api
from healmesh.gateway.api import ApiError, parse_predict_body

FEATURE_NAMES = schema.active().feature_names


def tx() -> dict:
    row = generate(1, seed=3)[list(FEATURE_NAMES)].iloc[0].to_dict()
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}


def test_parse_single_and_batch():
    rows, single = parse_predict_body(json.dumps(tx()).encode(), 10)
    assert single and len(rows) == 1 and rows[0]["card_id"] is None
    rows, single = parse_predict_body(json.dumps([tx(), tx()]).encode(), 10)
    assert not single and len(rows) == 2


@pytest.mark.parametrize("body,status,fields", [
    (b"{nope", 400, set()),
    (json.dumps([tx()] * 11).encode(), 413, set()),
    (json.dumps([]).encode(), 422, set()),
    (json.dumps(7).encode(), 422, set()),
    (json.dumps([tx(), 5]).encode(), 422, set()),
    (json.dumps(tx() | {"amount": None, "geo": "moon"}).encode(), 422, {"amount", "geo"}),
])
def test_parse_refuses_with_the_right_status(body, status, fields):
    with pytest.raises(ApiError) as exc:
        parse_predict_body(body, 10)
    assert exc.value.status == status
    if fields:
        assert {d["field"] for d in exc.value.detail} == fields


# --- every answer names its worker ------------------------------------------------------------------

def call(app, method: str, path: str, body: bytes = b"") -> tuple[int, dict[bytes, bytes], bytes]:
    sent: list[dict] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": [(b"content-type", b"application/json")]}
    asyncio.run(app(scope, receive, send))
    start = sent[0]
    return start["status"], dict(start["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


def test_every_answer_names_the_worker_that_gave_it(monkeypatch):
    monkeypatch.setattr(api, "current_core", lambda: SimpleNamespace(metrics=SimpleNamespace(instance_id="abc123"),
                                                                     saturated=lambda: None))

    async def inner(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"inner"})

    app = api.PredictFastPath(inner)
    status, headers, body = call(app, "GET", "/metrics")
    assert (status, body, headers[b"x-healmesh-worker"]) == (200, b"inner", b"abc123")
    status, headers, body = call(app, "POST", "/api/v1/predict", b'{"amount": 3')  # answered by the fast path
    assert status == 400 and headers[b"x-healmesh-worker"] == b"abc123" and "error" in json.loads(body)


def test_no_core_no_header(monkeypatch):
    def missing():
        raise LookupError("no service")

    monkeypatch.setattr(api, "current_core", missing)

    async def inner(scope, receive, send):
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    status, headers, _ = call(api.PredictFastPath(inner), "GET", "/livez")
    assert status == 204 and b"x-healmesh-worker" not in headers


def test_past_the_admission_limit_the_fast_path_sheds_before_reading_the_body(monkeypatch):
    from healmesh.errors import Saturated

    shed: list[str] = []
    core = SimpleNamespace(metrics=SimpleNamespace(instance_id="abc123"), saturated=lambda: Saturated(1.5),
                           count_shed=shed.append)
    monkeypatch.setattr(api, "current_core", lambda: core)

    async def never(scope, receive, send):
        raise AssertionError("a shed request reached the app")

    app = api.PredictFastPath(never)
    status, headers, body = call(app, "POST", "/api/v1/predict", b"not even parsed")
    assert (status, json.loads(body), headers[b"retry-after"]) == (503, {"error": "gateway saturated"}, b"2")
    assert shed == ["admission"]
