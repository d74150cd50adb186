"""The gateway's prediction as a typed BentoML API (``POST /predict``): BentoML's own clients find
it and get the answers ``POST /api/v1/predict`` gives (real scorers, real Redis)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import bentoml
import httpx
import pytest
from bentoml.exceptions import InvalidArgument

from healmesh.control import keys

from .load import transactions
from .test_gateway import anonymous, drained, stream_len

pytestmark = pytest.mark.integration
PREFIX = "hm-main"  # the `gateway` fixture's key prefix
# what a card's answer shares on both routes (routing is sticky by card id); request_id and
# latency_ms are the request's own
SAME = ("label", "model", "model_version", "variant", "fallback", "degraded")
FIELDS = {"request_id", "latency_ms", "probability", *SAME}


def fast_path(url: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    r = httpx.post(url + "/api/v1/predict", json=rows, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def same_answers(typed: list[dict[str, Any]], fast: list[dict[str, Any]]) -> None:
    assert len(typed) == len(fast)
    for t, f in zip(typed, fast, strict=True):
        assert set(t) == set(f) == FIELDS, t
        assert {k: t[k] for k in SAME} == {k: f[k] for k in SAME}
        # concurrent requests share a scorer batch: the MLP's float32 sums then differ in the last bits
        assert t["probability"] == pytest.approx(f["probability"], rel=1e-5)
        assert keys.REQUEST_ID.match(t["request_id"]) and t["request_id"] != f["request_id"]
        assert not t["fallback"] and not t["degraded"]


def test_bentoml_sync_client_calls_the_gateway_and_gets_the_fast_paths_answers(gateway, redis_srv):
    url = gateway.url
    rows = transactions(20, seed=31)  # each with its card id
    drained(gateway)
    before = stream_len(redis_srv.port, PREFIX)
    with bentoml.SyncHTTPClient(url) as client:
        assert client.endpoints["predict"].route == "/predict"
        typed = [client.predict(rows=[row]) for row in rows] + [client.predict(rows=rows)]
    fast = [fast_path(url, [row]) for row in rows] + [fast_path(url, rows)]
    for t, f in zip(typed, fast, strict=True):
        same_answers(t, f)
    assert len({a[0]["variant"] for a in typed}) == 2  # the cards spread over both variants
    drained(gateway)
    assert stream_len(redis_srv.port, PREFIX) == before + 4 * len(rows)  # both routes log every row
    assert "/predict" in httpx.get(url + "/docs.json", timeout=10).json()["paths"]  # in BentoML's API docs


def test_bentoml_async_client_gets_the_same_answers(gateway):
    rows = transactions(8, seed=32)

    async def typed() -> list[list[dict[str, Any]]]:
        async with bentoml.AsyncHTTPClient(gateway.url) as client:
            return list(await asyncio.gather(*(client.predict(rows=[row]) for row in rows)))

    for row, answer in zip(rows, asyncio.run(typed()), strict=True):
        same_answers(answer, fast_path(gateway.url, [row]))


def test_a_bad_field_is_a_400_naming_it_and_leaves_no_trace(gateway, redis_srv):
    url = gateway.url
    drained(gateway)
    before = stream_len(redis_srv.port, PREFIX)
    good = anonymous(1, seed=33)[0]
    post = lambda body, media="application/json": httpx.post(  # noqa: E731
        url + "/predict", content=body, headers={"content-type": media}, timeout=10)
    cases = [  # BentoML's answer to a pydantic error: 400 {"error": ..., "detail": [{"loc": [...], ...}]}
        ({"rows": [good | {"amount": "12"}]}, ["rows", 0, "amount"]),
        ({"rows": [good | {"hour": 2.5}]}, ["rows", 0, "hour"]),
        ({"rows": [{k: v for k, v in good.items() if k != "hour"}]}, ["rows", 0, "hour"]),
        ({"rows": [good, good | {"geo": "mars"}]}, ["rows", 1, "geo"]),
        ({"rows": [good | {"surprise": 1}]}, ["rows", 0, "surprise"]),
        ({"rows": []}, ["rows"]),
        ({"transactions": [good]}, ["rows"]),
    ]
    for body, loc in cases:
        r = post(json.dumps(body))
        assert r.status_code == 400, (body, r.status_code, r.text[:300])
        assert loc in [d["loc"] for d in r.json()["detail"]], r.text[:300]
    # the access guard's strict JSON, as on the fast path
    assert post(b'{"rows": [').status_code == 400
    dup = post(b'{"rows": [], "rows": [' + json.dumps(good).encode() + b"]}")
    assert dup.status_code == 422 and dup.json()["detail"][0]["field"] == "rows", dup.text
    assert post(json.dumps({"rows": [good]}), "text/plain").status_code == 415
    with bentoml.SyncHTTPClient(url) as client, pytest.raises(InvalidArgument, match="geo"):
        client.predict(rows=[good | {"geo": "mars"}])
    drained(gateway)  # a record a refused request left would be in Redis by now
    assert stream_len(redis_srv.port, PREFIX) == before


def test_a_batch_past_max_batch_rows_is_refused(gateway, settings):
    url, limit = gateway.url, settings.max_batch_rows
    good = anonymous(1, seed=34)[0]
    r = httpx.post(url + "/predict", json={"rows": [good] * (limit + 1)}, timeout=10)
    assert r.status_code == 400 and r.json()["detail"][0]["loc"] == ["rows"], r.text[:300]
    assert r.json()["detail"][0]["type"] == "too_long"
    big = httpx.post(url + "/predict", content=b'{"rows": ["' + b"9" * settings.max_body_bytes + b'"]}',
                     headers={"content-type": "application/json"}, timeout=10)
    assert big.status_code == 413, big.text[:300]
    ok = httpx.post(url + "/predict", json={"rows": [good] * limit}, timeout=30)
    assert ok.status_code == 200 and len(ok.json()) == limit
