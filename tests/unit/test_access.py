"""The access guard: who may call what and how large a body may be, decided before a byte of the
body is read. Driven as an ASGI app in memory (the black-box tests run it in real servers)."""

import asyncio
import json

import pytest

from healmesh.access import (
    Access,
    AccessGuard,
    RequestRejected,
    Tokens,
    gateway_policy,
    is_json,
    loads_strict,
    scorer_policy,
)

TOKENS = Tokens(admin="admin-token-123", labeller="label-token-123")


def test_every_gateway_route_has_the_credential_the_threat_model_names():
    policy = gateway_policy(1_000_000)
    for path in ("/api/v1/predict", "/predict"):  # the fast path and BentoML's typed API
        rule = policy.rule_for(path)
        assert rule.access is Access.PUBLIC and rule.max_body == 1_000_000, path
    assert policy.rule_for("/api/v1/feedback").access is Access.LABELLER
    assert policy.rule_for("/api/v1/feedback/batch").access is Access.LABELLER
    for path in ("/api/v1/admin", "/api/v1/admin/weights", "/api/v1/admin/labels/abc"):
        assert policy.rule_for(path).access is Access.ADMIN, path
    for path in ("/metrics", "/livez", "/readyz", "/ui/", "/api/v1/openapi.json", "/anything"):
        rule = policy.rule_for(path)
        assert rule.access is Access.PUBLIC and rule.max_body <= 64 * 1024, path
    scorer = scorer_policy(1_000_000)
    assert scorer.rule_for("/admin/faults").access is Access.ADMIN
    assert scorer.rule_for("/predict_canary").access is Access.PUBLIC


def test_tokens_admin_may_label_labeller_may_not_administer():
    assert TOKENS.check(Access.LABELLER, "label-token-123") is True
    assert TOKENS.check(Access.LABELLER, "admin-token-123") is True
    assert TOKENS.check(Access.ADMIN, "label-token-123") is False
    assert TOKENS.check(Access.ADMIN, "") is False
    assert TOKENS.check(Access.ADMIN, "admin-token-12") is False
    assert Tokens(admin=None).check(Access.ADMIN, "anything") is None  # nobody can: 503, not open
    assert Tokens(admin=None).check(Access.PUBLIC, "") is True


@pytest.mark.parametrize("raw,status,field", [
    (b'{"amount": 1, "amount": 2}', 422, "amount"),
    (b'[{"a": 1}, {"b": {"c": 1, "c": 2}}]', 422, "c"),
    (b'{"amount": NaN}', 400, None),
    (b'{"amount": Infinity}', 400, None),
    (b"[" * 5_000, 400, None),
    (b"[" * 5_000 + b"]" * 5_000, 400, None),
    (b'{"amount": 3', 400, None),
    (b"\xff\xfe", 400, None),
])
def test_strict_json_refuses_what_parsers_disagree_on(raw, status, field):
    with pytest.raises(RequestRejected) as exc:
        loads_strict(raw)
    assert exc.value.status == status
    if field:
        assert exc.value.detail[0]["field"] == field


def test_content_types():
    assert is_json(b"application/json") and is_json(b"application/json; charset=utf-8")
    assert is_json(b"application/merge-patch+json")
    assert not is_json(b"text/plain") and not is_json(None) and not is_json(b"application/x-www-form-urlencoded")


class App:
    """An inner ASGI app that records what it read."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope, receive, send):
        body, more = b"", True
        while more:
            m = await receive()
            body += m.get("body", b"")
            more = m.get("more_body", False)
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def call(method, path, headers, chunks, policy=None):
    """Run one request through the guard; returns (status, response body, inner app, chunks read)."""
    app = App()
    guard = AccessGuard(app, policy or gateway_policy(1_000), lambda: TOKENS)
    pending = list(chunks)
    read = []

    async def receive():
        if not pending:
            return {"type": "http.disconnect"}
        chunk = pending.pop(0)
        read.append(chunk)
        return {"type": "http.request", "body": chunk, "more_body": bool(pending)}

    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path,
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    asyncio.run(guard(scope, receive, send))
    status = sent[0]["status"]
    return status, sent[1]["body"], app, read


def test_no_token_is_refused_before_a_byte_of_the_body_is_read():
    big = [b"x" * 1_000] * 100
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "Bearer label-token-123"}):
        status, body, app, read = call("PUT", "/api/v1/admin/weights",
                                       {"content-type": "application/json", "content-length": "100000", **headers},
                                       big)
        assert status == 401 and read == [] and app.bodies == [], headers
        assert b"admin token" in body


def test_oversize_is_refused_before_reading_declared_or_chunked():
    auth = {"authorization": "Bearer admin-token-123", "content-type": "application/json"}
    status, _, app, read = call("PUT", "/api/v1/admin/weights", {**auth, "content-length": str(10 ** 8)},
                                [b"{}"])
    assert status == 413 and read == [] and app.bodies == []
    chunks = [b"x" * 16_384] * 10  # chunked: no length given; stopped once the limit is passed
    status, _, app, read = call("PUT", "/api/v1/admin/weights", {**auth, "transfer-encoding": "chunked"}, chunks)
    assert status == 413 and app.bodies == [] and len(read) == 5  # 5 x 16 KiB > 64 KiB, then no more


def test_non_json_and_duplicate_keys_are_refused_valid_json_passes_untouched():
    status, _, app, _ = call("POST", "/api/v1/predict", {"content-type": "text/plain", "content-length": "2"},
                             [b"{}"])
    assert status == 415 and app.bodies == []
    auth = {"authorization": "Bearer label-token-123", "content-type": "application/json"}
    dup = b'{"request_id": "a", "label": 1, "label": 0}'
    status, body, app, _ = call("POST", "/api/v1/feedback", {**auth, "content-length": str(len(dup))}, [dup])
    assert status == 422 and json.loads(body)["detail"][0]["field"] == "label" and app.bodies == []
    good = b'{"request_id": "a", "label": 1}'
    status, _, app, _ = call("POST", "/api/v1/feedback", {**auth, "content-length": str(len(good))},
                             [good[:10], good[10:]])
    assert status == 200 and app.bodies == [good]  # replayed whole to the route


def test_public_routes_need_no_token():
    status, _, app, _ = call("GET", "/metrics", {}, [b""])
    assert status == 200 and app.bodies == [b""]
    status, _, _, _ = call("GET", "/predict", {}, [b""], policy=scorer_policy(1_000))
    assert status == 200


def test_no_gateway_route_is_public_unless_the_threat_model_says_so():
    """Every route the gateway's API declares gets the credential docs/architecture.md names: a
    new admin or label route cannot slip out public."""
    from healmesh.gateway.api import build_app

    policy = gateway_policy(1_000_000)
    public = {"/api/v1/predict", "/api/v1/openapi.json", "/api/v1/docs", "/api/v1/docs/oauth2-redirect",
              "/api/v1/redoc"}
    seen = set()
    for route in build_app().routes:
        path = "/api/v1" + route.path.replace("{request_id}", "0" * 32)
        seen.add(path)
        expected = (Access.PUBLIC if path in public else Access.LABELLER if path.startswith("/api/v1/feedback")
                    else Access.ALERTS if path == "/api/v1/alerts" else Access.ADMIN)
        assert policy.rule_for(path).access is expected, path
    assert "/api/v1/admin/labels/" + "0" * 32 in seen and "/api/v1/feedback/batch" in seen
    assert "/api/v1/alerts" in seen
