"""Tests healmesh.gateway.api: parsing a predict request body, and the worker header on every answer."""

import asyncio
import json
from types import SimpleNamespace

import pytest

from healmesh.gateway import api
from healmesh.gateway.api import ApiError, parse_predict_body


def test_parse_single_and_batch(example):
    tx, other = example.records(2, seed=3)
    rows, single = parse_predict_body(json.dumps(tx).encode(), 10)
    assert single and len(rows) == 1
    assert {k: rows[0][k] for k in example.schema.feature_names} == {k: tx[k] for k in example.schema.feature_names}
    if example.schema.entity_key:
        assert rows[0][example.schema.entity_key] == tx[example.schema.entity_key]
        no_key = {k: v for k, v in tx.items() if k != example.schema.entity_key}
        assert parse_predict_body(json.dumps(no_key).encode(), 10)[0][0][example.schema.entity_key] is None
    else:
        assert set(rows[0]) == set(example.schema.feature_names)
    rows, single = parse_predict_body(json.dumps([tx, other]).encode(), 10)
    assert not single and len(rows) == 2


# each case: the body, from one valid request of the served example; the status; the fields named
REFUSALS = [
    pytest.param(lambda ex, tx: b"{nope", 400, None, id="not-json"),
    pytest.param(lambda ex, tx: json.dumps([tx] * 11).encode(), 413, None, id="too-many-rows"),
    pytest.param(lambda ex, tx: json.dumps([]).encode(), 422, None, id="empty-batch"),
    pytest.param(lambda ex, tx: json.dumps(7).encode(), 422, None, id="not-an-object"),
    pytest.param(lambda ex, tx: json.dumps([tx, 5]).encode(), 422, None, id="batch-with-a-number"),
    pytest.param(lambda ex, tx: json.dumps(tx | {ex.first("numeric").name: None}).encode(), 422,
                 lambda ex: {ex.first("numeric").name}, id="null-number"),
    pytest.param(lambda ex, tx: json.dumps(tx | {ex.first("numeric").name: None,
                                                ex.first("categorical").name: "moon"}).encode(), 422,
                 lambda ex: {ex.first("numeric").name, ex.first("categorical").name},
                 id="null-number-and-bad-category"),
    pytest.param(lambda ex, tx: json.dumps(tx | {"nope": 1}).encode(), 422, lambda ex: {"nope"}, id="unknown-field"),
]


@pytest.mark.parametrize("body,status,fields", REFUSALS)
def test_parse_refuses_with_the_right_status(example, body, status, fields):
    raw = body(example, example.records(1, seed=3)[0])
    with pytest.raises(ApiError) as exc:
        parse_predict_body(raw, 10)
    assert exc.value.status == status
    if fields is not None:
        assert {d["field"] for d in exc.value.detail} == fields(example)


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
