"""Black-box tests of what the mesh must refuse, charge and keep (issue 8): oversize bodies without a
credential, breakers charged per upstream call, concurrent control writers, records kept through
a Redis outage and a gateway shutdown. Against real processes."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
from typing import Any

import httpx
import pytest
import redis

from healmesh import logkeys, procs

from .conftest import TOKEN, scorer_urls, start_gateway, start_redis
from .load import run, transactions

pytestmark = pytest.mark.integration
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MB = 1024 * 1024


def anonymous(n: int, seed: int) -> list[dict[str, Any]]:
    return [{k: v for k, v in tx.items() if k != "card_id"} for tx in transactions(n, seed=seed)]


def rss_mb(server: procs.ServerProcess) -> float:
    """Resident memory of a server's whole process tree (arbiter and workers)."""
    assert server.popen is not None
    return sum(p.memory_info().rss for p in procs.process_tree(server.popen.pid)) / MB


def first_answer(port: int, head: bytes, body_prefix: bytes, timeout_s: float = 30.0) -> bytes:
    """Send a request's head and the start of its body, then read: a server that checks before
    reading answers now; one that reads the whole declared body first never does."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
        s.sendall(head + body_prefix)
        try:
            return s.recv(4096)
        except TimeoutError:
            return b""


@pytest.mark.parametrize("target,path", [("gateway", "/api/v1/admin/weights"), ("gateway", "/api/v1/feedback"),
                                         ("xgboost", "/admin/faults")])
def test_no_credential_is_refused_before_the_body_is_read(gateway, scorers, target, path):
    server = gateway if target == "gateway" else scorers[target]
    head = (f"PUT {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {100 * MB}\r\n\r\n").encode()
    if path.endswith("feedback"):
        head = head.replace(b"PUT", b"POST", 1)
    answer = first_answer(server.port, head, b'{"weights": {"' + b"x" * 65_000)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]


def test_an_oversize_body_without_a_token_costs_no_memory(gateway):
    """100 MB streamed (chunked, no length given) to an admin route with no token."""
    before = rss_mb(gateway)
    chunk = b"x" * MB

    def body():
        yield b'{"weights": {"xgboost_stable": "'
        for _ in range(100):
            yield chunk

    try:
        r = httpx.put(gateway.url + "/api/v1/admin/weights", content=body(), timeout=60,
                      headers={"content-type": "application/json"})
        status = r.status_code
    except httpx.HTTPError:  # the server answered and closed while we were still sending: also refused
        status = 401
    after = rss_mb(gateway)
    print(f"\ngateway RSS before/after a 100 MB unauthenticated body: {before:.0f} / {after:.0f} MB")
    assert status == 401
    assert after - before < 50, (before, after)


def longest_failure_run(seed: int, rate: float, draws: int) -> int:
    rng, run_, longest = random.Random(seed), 0, 0
    for _ in range(draws):
        run_ = run_ + 1 if rng.random() < rate else 0
        longest = max(longest, run_)
    return longest


def test_five_percent_failed_calls_do_not_open_the_breaker(gateway, scorers):
    """The scorer fails 5 % of its calls, never 5 in a row (its seeded fault sequence says so), so
    the breaker must stay closed. Charged per request a coalesced call carried, it opened on the
    second failed call."""
    url, xgb, seed = gateway.url, scorers["xgboost"].url, 7
    assert longest_failure_run(seed, 0.05, 50_000) < 5
    opened_before = [t for t in httpx.get(url + "/api/v1/admin/state", headers=AUTH).json()["transitions"]
                     if t["upstream"] == "xgboost_stable" and t["to"] == "open"]
    assert httpx.put(xgb + "/admin/faults", headers=AUTH,
                     json={"error_rate": 0.05, "seed": seed, "slot": "stable"}).status_code == 200
    try:
        replies = run(url + "/api/v1/predict", anonymous(3_000, seed=21), concurrency=64)
        injected = httpx.get(xgb + "/admin/state", headers=AUTH).json()["faults"]["injected_errors"]
    finally:
        httpx.delete(xgb + "/admin/faults", headers=AUTH)
    assert {r.status for r in replies} == {200}
    st = httpx.get(url + "/api/v1/admin/state", headers=AUTH).json()
    opened = [t for t in st["transitions"] if t["upstream"] == "xgboost_stable" and t["to"] == "open"]
    print(f"\n{injected} failed calls injected; xgboost_stable breaker {st['breakers']['xgboost_stable']['state']}, "
          f"opened {len(opened) - len(opened_before)} times")
    assert injected > 0
    assert opened == opened_before, opened[len(opened_before):]


def test_concurrent_control_writers_lose_no_update(gateway, scorers, redis_srv, session_dir, settings):
    """1,000 changes (weights, shadow, rollout stages) from 32 concurrent clients through two
    gateway processes. The audit trail must be one unbroken history: every accepted change is in
    it once, versions rise by one, and each change starts from the state the previous one left
    (a stage change computed on stale weights would undo an operator's weight change)."""
    from healmesh import registry

    twin = start_gateway(session_dir, redis_srv.port, scorer_urls(scorers), tag="twin", HEALMESH_KEY_PREFIX="hm-main")
    r = redis.Redis(port=redis_srv.port)
    name = settings.xgb_registered_name
    registry.set_alias(settings, name, "challenger", "1")
    assert httpx.post(scorers["xgboost"].url + "/admin/reload", headers=AUTH).json()["slots"]["canary"]
    start_version = int(r.hget("hm-main:control", "version") or 0)
    last_id = (r.xrevrange("hm-main:audit", count=1) or [(b"0-0", {})])[0][0]
    rng = random.Random(5)
    changes: list[tuple[str, dict[str, Any]]] = []
    for i in range(1_000):
        kind = ("weights", "shadow", "rollout")[i % 3]
        if kind == "weights":
            body = {"weights": {"xgboost_stable": rng.randint(1, 9), "pytorch": rng.randint(1, 9)}}
        elif kind == "shadow":
            body = {"enabled": bool(i % 2), "target": "pytorch"}
        else:
            body = {"stage": rng.choice((10, 50, 100)), "canary_version": "1", "status": "running"}
        changes.append((kind, {**body, "why": f"writer {i}", "who": f"w{i % 32}"}))

    odd: list[str] = []

    async def write_all() -> list[int]:
        statuses: list[int] = []
        queue = list(enumerate(changes))
        async with httpx.AsyncClient(timeout=60, headers=AUTH) as client:
            async def writer() -> None:
                while queue:
                    i, (kind, body) = queue.pop()
                    base = (gateway if i % 2 else twin).url
                    resp = await client.put(f"{base}/api/v1/admin/{kind}", json=body)
                    statuses.append(resp.status_code)
                    if resp.status_code not in (200, 409):
                        odd.append(resp.text[:300])

            await asyncio.gather(*(writer() for _ in range(32)))
        return statuses

    try:
        statuses = asyncio.run(write_all())
        entries = [{k.decode(): v.decode() for k, v in f.items()}
                   for _, f in r.xrange("hm-main:audit", min=f"({last_id.decode()}")]
    finally:
        for body in ({"stage": 0, "status": "rolled_back", "why": "restore"},):
            httpx.put(gateway.url + "/api/v1/admin/rollout", json=body, headers=AUTH)
        httpx.put(gateway.url + "/api/v1/admin/shadow", json={"enabled": False, "why": "restore"}, headers=AUTH)
        httpx.put(gateway.url + "/api/v1/admin/weights", headers=AUTH,
                  json={"weights": {"xgboost_stable": 0.8, "pytorch": 0.2}, "why": "restore"})
        registry.delete_alias(settings, name, "challenger")
        httpx.post(scorers["xgboost"].url + "/admin/reload", headers=AUTH)
        twin.stop()
    accepted = statuses.count(200)
    assert set(statuses) <= {200, 409}, (sorted(set(statuses)), odd[:5])
    assert len(entries) == accepted, (len(entries), accepted)
    versions = [int(e["version"]) for e in entries]
    assert versions == list(range(start_version + 1, start_version + accepted + 1))
    lost = 0
    for prev, cur in zip(entries, entries[1:], strict=False):
        a, b = json.loads(prev["state_after"]), json.loads(cur["state_before"])
        same_weights = all(abs(a["weights"][k] - b["weights"][k]) < 1e-9 for k in a["weights"])
        lost += not (same_weights and a["shadow"] == b["shadow"] and a["rollout"] == b["rollout"])
    print(f"\n{accepted} changes accepted, {statuses.count(409)} refused (409), {lost} lost updates")
    assert lost == 0
    assert accepted >= 900  # contention is resolved by retrying, not by refusing most writers


def test_records_accepted_while_redis_is_down_survive_a_gateway_shutdown(scorers, session_dir):
    """Redis stopped, 1,000 predictions, the gateway SIGTERMed, Redis and the gateway restarted:
    all 1,000 are in the stream, once each."""
    store = start_redis(session_dir, persist=True)
    prefix = "hm-spool"
    gw = start_gateway(session_dir, store.port, scorer_urls(scorers), tag="spool", HEALMESH_KEY_PREFIX=prefix)
    try:
        store.stop()
        replies = run(gw.url + "/api/v1/predict", anonymous(1_000, seed=31), concurrency=16)
        assert {r.status for r in replies} == {200}
        answered = {r.body["request_id"] for r in replies}
        state = httpx.get(gw.url + "/api/v1/admin/state", headers=AUTH).json()["feature_log"]
        assert state["dropped"] == 0 and not state["redis_up"]
        gw.stop()  # SIGTERM: what is not in Redis goes to the spool
        store.start()
        store.wait_ready(timeout=20)
        gw.start()
        gw.wait_ready(timeout=120)
        client = redis.Redis(port=store.port)
        deadline = time.monotonic() + 60
        while client.xlen(f"{prefix}:features") < 1_000 and time.monotonic() < deadline:
            time.sleep(0.2)
        logged = [f[b"request_id"].decode() for _, f in client.xrange(f"{prefix}:features")]
        print(f"\nafter the restart: {len(logged)} of {len(answered)} records in the stream")
        assert len(logged) == 1_000 and set(logged) == answered
        feature_log = httpx.get(gw.url + "/api/v1/admin/state", headers=AUTH).json()["feature_log"]
        assert feature_log["replayed"] == 1_000 and feature_log["dropped"] == 0
        # and each can still be labelled: its minute hash came with it
        rid = next(iter(answered))
        assert client.hget(logkeys.bucket_key(prefix, rid), rid) == b"1"
    finally:
        gw.stop()
        store.stop()
