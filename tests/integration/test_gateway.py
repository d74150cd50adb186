"""The gateway against real Redis and real scorer processes."""

from __future__ import annotations

import collections
import json
import re
import time
from typing import Any

import httpx
import pytest
import redis

from healmesh.control import keys

from .conftest import (
    LABELLER_TOKEN,
    TOKEN,
    metric_value,
    poll,
    publish_drift,
    scorer_env,
    scorer_urls,
    start_gateway,
    start_redis,
    start_scorer,
    worker_states,
)
from .load import run, transactions

pytestmark = pytest.mark.integration
RAMP_STEP_S = "4"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LABELLER = {"Authorization": f"Bearer {LABELLER_TOKEN}"}


def anonymous(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Transactions without a card id: routed at random by the weights."""
    return [{k: v for k, v in tx.items() if k != "card_id"} for tx in transactions(n, seed=seed)]


def admin(url: str, method: str, path: str, **kw: Any) -> httpx.Response:
    return httpx.request(method, f"{url}/api/v1/admin{path}", headers=AUTH, timeout=10, **kw)


def state(url: str) -> dict[str, Any]:
    return admin(url, "GET", "/state").json()


def wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def stream_len(redis_port: int, prefix: str, key: str = "features") -> int:
    return redis.Redis(port=redis_port).xlen(f"{prefix}:{key}")


def every_worker(server, check, what: str, timeout: float = 15.0) -> None:
    """Wait until ``check(state)`` holds in every worker of ``server`` (each polls the control state)."""
    poll(lambda: all(check(st) for st in worker_states(server).values()), timeout, what)


def drained(server) -> None:
    """Wait until no worker holds an unwritten feature-log record: what was answered is in Redis."""
    every_worker(server, lambda st: st["feature_log"]["buffered"] == 0, "the feature-log buffers to drain", 30)


def shares(replies) -> dict[str, float]:
    counts = collections.Counter(r.body["variant"] for r in replies)
    return {k: v / len(replies) for k, v in counts.items()}


def no_errors(replies) -> None:
    bad = [(r.status, r.body) for r in replies if r.status != 200]
    assert not bad, bad[:3]


@pytest.fixture(scope="module")
def one_worker(scorers, redis_srv, session_dir):
    """A gateway of one worker, for a test of one worker's logic: breakers, their transitions
    and the ramp are per worker, and every state read here is the worker that took the traffic.
    (The `gateway` fixture runs the default: two workers on two CPUs or more.)"""
    # ramp steps of 4 s: every step is seen by a state poll however slow the machine (the default
    # 1 s fast step could pass between two reads)
    server = start_gateway(session_dir, redis_srv.port, scorer_urls(scorers), tag="one", HEALMESH_GATEWAY_WORKERS="1",
                           HEALMESH_BREAKER__RAMP_STEP_S=RAMP_STEP_S)
    yield server
    server.stop()


# --- routing ----------------------------------------------------------------------------------


def test_5000_requests_split_80_20(gateway):
    replies = run(gateway.url + "/api/v1/predict", anonymous(5_000, seed=1), concurrency=32)
    no_errors(replies)
    split = shares(replies)
    print(f"\nsplit over 5000: {split}")
    assert abs(split.get("xgboost_stable", 0) - 0.8) <= 0.03
    assert abs(split.get("pytorch", 0) - 0.2) <= 0.03
    for r in replies[:50]:
        assert set(r.body) == {"request_id", "probability", "label", "model", "model_version", "variant",
                               "fallback", "degraded", "latency_ms"}
        assert not r.body["fallback"] and not r.body["degraded"]


def _calls_not_ok_and_transitions(url: str) -> tuple[float, float]:
    text = httpx.get(url + "/metrics", timeout=10).text
    calls = metric_value(text, "healmesh_gateway_upstream_calls_total") or 0.0
    ok = metric_value(text, "healmesh_gateway_upstream_calls_total", result="ok") or 0.0
    return calls - ok, metric_value(text, "healmesh_gateway_breaker_transitions_total") or 0.0


def test_sticky_keys_hold_their_variant(gateway):
    """A card keeps its variant while the weights and breakers stand; only a failed call may send
    one of its requests elsewhere (failover to the next variant is the chain doing its job: a run
    on an overloaded machine saw a 500 ms attempt time out and a card answered by PyTorch once)."""
    base = anonymous(1, seed=2)[0]
    bodies = [base | {"card_id": f"card-{i % 300}"} for i in range(1_500)]
    failed_before, transitions_before = _calls_not_ok_and_transitions(gateway.url)
    replies = run(gateway.url + "/api/v1/predict", bodies, concurrency=16)
    failed_after, transitions_after = _calls_not_ok_and_transitions(gateway.url)
    no_errors(replies)
    assert transitions_after == transitions_before, "a breaker changed state: the weights did not stand"
    by_card: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for r in replies:
        by_card[bodies[r.index]["card_id"]][r.body["variant"]] += 1
    assert len(by_card) == 300
    usual = {card: counts.most_common(1)[0][0] for card, counts in by_card.items()}
    moved = sum(n for card, counts in by_card.items() for v, n in counts.items() if v != usual[card])
    assert moved <= failed_after - failed_before, f"{moved} answers left their card's variant without a failed call"
    variants = collections.Counter(usual.values())
    assert set(variants) == {"xgboost_stable", "pytorch"}  # the keys spread over both
    assert 0.7 <= variants["xgboost_stable"] / 300 <= 0.9


def test_weight_change_through_admin_reaches_traffic(gateway):
    url = gateway.url
    assert httpx.put(url + "/api/v1/admin/weights", json={"weights": {"pytorch": 1}, "why": "x"}).status_code == 401
    assert httpx.get(url + "/api/v1/admin/state", headers={"Authorization": "Bearer nope"}).status_code == 401
    try:
        r = admin(url, "PUT", "/weights", json={"weights": {"xgboost_stable": 1, "pytorch": 1},
                                                 "why": "test 50/50", "who": "pytest"})
        assert r.status_code == 200 and r.json()["weights"]["pytorch"] == 0.5
        every_worker(gateway, lambda st: st["effective_weights"]["pytorch"] == pytest.approx(0.5), "50/50 everywhere")
        replies = run(url + "/api/v1/predict", anonymous(1_000, seed=3), concurrency=16)
        no_errors(replies)
        assert abs(shares(replies).get("pytorch", 0) - 0.5) <= 0.06
        audit = admin(url, "GET", "/audit?limit=5").json()
        latest = audit[0]
        assert (latest["what"], latest["who"], latest["why"]) == ("weights", "pytest", "test 50/50")
        assert latest["after"]["pytorch"] == 0.5 and latest["before"]["pytorch"] == 0.2 and latest["when"] > 0
        bad = admin(url, "PUT", "/weights", json={"weights": {"xgboost_canary": 1}, "why": "no canary"})
        assert bad.status_code == 409
        assert admin(url, "PUT", "/weights", json={"weights": {"catboost": 1}, "why": "x"}).status_code == 422
        huge = admin(url, "PUT", "/weights", json={"weights": {"xgboost_stable": 1e308, "pytorch": 1e308}, "why": "x"})
        assert huge.status_code == 422 and huge.json()["detail"][0]["field"] == "weights.xgboost_stable", huge.text
        assert state(url)["effective_weights"]["xgboost_stable"] == pytest.approx(0.5)  # nothing changed
    finally:
        admin(url, "PUT", "/weights", json={"weights": {"xgboost_stable": 0.8, "pytorch": 0.2}, "why": "restore"})
        every_worker(gateway, lambda st: st["effective_weights"]["pytorch"] == pytest.approx(0.2), "80/20 again")


# --- breakers -----------------------------------------------------------------------------------


def test_breaker_opens_on_a_failing_scorer_and_traffic_ramps_back(one_worker, scorers):
    url, xgb = one_worker.url, scorers["xgboost"].url
    assert httpx.put(xgb + "/admin/faults", headers=AUTH, json={"error_rate": 1.0}).status_code == 200
    try:
        failing = run(url + "/api/v1/predict", anonymous(400, seed=4), concurrency=8)
        no_errors(failing)
        assert {r.body["variant"] for r in failing} <= {"pytorch", "fallback", "xgboost_stable"} and \
            not any(r.body["variant"] == "xgboost_stable" for r in failing)
        st = state(url)
        assert st["breakers"]["xgboost_stable"]["state"] in ("open", "half_open")
        opened = [t for t in st["transitions"] if t["upstream"] == "xgboost_stable" and t["to"] == "open"]
        assert opened and "5 consecutive failures" in opened[0]["reason"]
        late = failing[-200:]
        assert shares(late).get("pytorch", 0) > 0.9  # its share went to the healthy model
    finally:
        httpx.delete(xgb + "/admin/faults", headers=AUTH)
    # healed: half-open probes, closed, then the share comes back in steps
    t_heal = time.monotonic()
    trickle = anonymous(2_000, seed=5)
    i = 0

    def closed() -> bool:
        nonlocal i
        run(url + "/api/v1/predict", trickle[i % 2000: i % 2000 + 20], concurrency=4)
        i += 20
        return state(url)["breakers"]["xgboost_stable"]["state"] == "closed"

    wait_for(closed, timeout=20, what="the xgboost_stable breaker to close")
    moves = [(t["from"], t["to"]) for t in state(url)["transitions"] if t["upstream"] == "xgboost_stable"]
    assert moves[-3:] == [("closed", "open"), ("open", "half_open"), ("half_open", "closed")] or \
        ("half_open", "closed") in moves
    ramp: list[float] = []

    def full_share() -> bool:
        st = state(url)
        ramp.append(st["breakers"]["xgboost_stable"]["capacity"])
        return st["effective_weights"]["xgboost_stable"] == pytest.approx(0.8)

    wait_for(full_share, timeout=40, interval=0.2, what="the full 80 % share")
    steps = sorted({c for c in ramp if 0 < c < 1})
    print(f"\nrecovered in {time.monotonic() - t_heal:.1f}s; capacity during the ramp: {steps}")
    assert ramp[0] < 1 and ramp == sorted(ramp) and len(steps) >= 2, ramp  # rising in steps, not all at once
    back = run(url + "/api/v1/predict", anonymous(2_000, seed=7), concurrency=16)
    no_errors(back)
    assert abs(shares(back).get("xgboost_stable", 0) - 0.8) <= 0.04


def test_overload_sheds_to_other_variants_without_tripping(gateway, scorers):
    """A scorer answering busy (503) is load, not a fault: its requests go to the other variant
    within the retry budget, the rest are shed with 503 + Retry-After; the fallback scorer is
    never used as overflow capacity (issue 12; it answered them before)."""
    url, xgb = gateway.url, scorers["xgboost"].url
    httpx.put(xgb + "/admin/faults", headers=AUTH, json={"error_rate": 1.0, "status": 503})
    try:
        replies = run(url + "/api/v1/predict", anonymous(300, seed=8), concurrency=8)
        breakers = {w: st["breakers"]["xgboost_stable"]["state"] for w, st in worker_states(gateway).items()}
        assert set(breakers.values()) == {"closed"}, breakers  # busy is not broken, in any worker
        answered = [r for r in replies if r.status == 200]
        shed = [r for r in replies if r.status != 200]
        assert {r.body["variant"] for r in answered} == {"pytorch"}, collections.Counter(
            r.body["variant"] for r in answered)  # neither xgboost nor the fallback scorer nor the rules
        assert all(r.status == 503 and r.body == {"error": "gateway saturated"} and r.headers["retry-after"] == "1"
                   for r in shed), collections.Counter(r.status for r in shed)
        assert len(answered) >= 50  # about pytorch's own share (60 of 300) and the retries the budget allowed
    finally:
        httpx.delete(xgb + "/admin/faults", headers=AUTH)


# --- fallback chain (own scorers: this test stops them) ------------------------------------------


def test_fallback_then_degraded_never_a_5xx(trained, mlflow_url, redis_srv, session_dir):
    own = {name: start_scorer(name, session_dir, scorer_env(mlflow_url), tag="-chain")
           for name in ("xgboost", "pytorch", "fallback")}
    gw = start_gateway(session_dir, redis_srv.port, scorer_urls(own), tag="chain")
    try:
        for name in ("xgboost", "pytorch"):
            httpx.put(own[name].url + "/admin/faults", headers=AUTH, json={"error_rate": 1.0})
        replies = run(gw.url + "/api/v1/predict", anonymous(300, seed=9), concurrency=8)
        no_errors(replies)
        assert {r.body["variant"] for r in replies} == {"fallback"}
        assert all(r.body["fallback"] and not r.body["degraded"] and r.body["model"] == "rules" for r in replies)

        for server in own.values():
            server.stop()
        replies = run(gw.url + "/api/v1/predict", anonymous(300, seed=10), concurrency=8)
        no_errors(replies)
        assert {r.body["variant"] for r in replies} == {"gateway_rules"}
        assert all(r.body["degraded"] and r.body["fallback"] for r in replies)
        assert all(0.0 <= r.body["probability"] <= 1.0 for r in replies)
    finally:
        gw.stop()
        for server in own.values():
            server.stop()


# --- feature log ----------------------------------------------------------------------------------


def test_redis_outage_loses_no_accepted_request(scorers, session_dir):
    """Requests before, during and after a Redis outage (in phases, so the outage surely overlaps
    traffic however fast the machine): every accepted request is in the stream once."""
    store = start_redis(session_dir, persist=True)
    gw = start_gateway(session_dir, store.port, scorer_urls(scorers), tag="outage")
    prefix = "hm-outage"
    try:
        bodies = anonymous(3_000, seed=11)
        before = run(gw.url + "/api/v1/predict", bodies[:1_000], concurrency=16)
        store.stop()  # SIGTERM: Redis writes its append-only file and exits
        during = run(gw.url + "/api/v1/predict", bodies[1_000:2_000], concurrency=16)
        store.start()
        store.wait_ready(timeout=20)
        after = run(gw.url + "/api/v1/predict", bodies[2_000:], concurrency=16)
        replies = before + during + after
        no_errors(replies)

        def drained() -> bool:  # every worker's buffer
            return all(st["feature_log"]["buffered"] == 0 and st["feature_log"]["redis_up"]
                       for st in worker_states(gw).values())

        wait_for(drained, timeout=30, what="the buffers to drain")
        logs = [st["feature_log"] for st in worker_states(gw).values()]
        assert all(st["dropped"] == 0 for st in logs) and sum(st["flush_errors"] for st in logs) > 0, logs
        assert stream_len(store.port, prefix) == len(replies) == 3_000
        ids = {r.body["request_id"] for r in replies}
        logged = redis.Redis(port=store.port).xrange(f"{prefix}:features")
        assert {f[b"request_id"].decode() for _, f in logged} == ids  # each accepted request, once
    finally:
        gw.stop()
        store.stop()


def test_shadow_is_never_waited_for_and_logs_beside_the_primary(scorers, redis_srv, session_dir):
    """The shadow target answers 600 ms late. Each answer reached the client before its shadow
    call ended (a primary that waited for its shadow could not); with at most 2 shadow calls in
    flight per worker, the rest are dropped and counted: every primary is shadowed or dropped."""
    prefix, torch_url = "hm-shadow", scorers["pytorch"].url
    gw = start_gateway(session_dir, redis_srv.port, scorer_urls(scorers), tag="shadow",
                       HEALMESH_SHADOW_MAX_IN_FLIGHT="2")
    url = gw.url
    bodies = anonymous(600, seed=12)
    try:
        assert admin(url, "PUT", "/weights", json={"weights": {"xgboost_stable": 1.0, "pytorch": 0.0},
                                                   "why": "primary on xgboost only"}).status_code == 200
        assert httpx.put(torch_url + "/admin/faults", headers=AUTH, json={"latency_ms": 600}).status_code == 200
        assert admin(url, "PUT", "/shadow", json={"enabled": True, "target": "pytorch",
                                                  "why": "compare pytorch"}).status_code == 200
        every_worker(gw, lambda st: st["control"]["shadow"]["enabled"], "the shadow on in every worker")
        on = run(url + "/api/v1/predict", bodies, concurrency=8)
        no_errors(on)
        every_worker(gw, lambda st: st["shadow"]["in_flight"] == 0, "the last shadow calls to land")
        drained(gw)
        answered = {r.headers["x-healmesh-worker"] for r in on}
        shadows = {w: st["shadow"] for w, st in worker_states(gw).items() if w in answered}
        text = httpx.get(url + "/metrics").text
    finally:
        httpx.delete(torch_url + "/admin/faults", headers=AUTH)
        gw.stop()
    assert {r.body["variant"] for r in on} == {"xgboost_stable"}
    calls = {res: metric_value(text, "healmesh_gateway_shadow_calls_total", result=res) or 0.0
             for res in ("ok", "error", "dropped")}
    assert sum(calls.values()) == len(on) and calls["dropped"] > 0 and calls["ok"] > 0, calls
    assert calls["dropped"] == sum(st["dropped"] for st in shadows.values())
    assert all(st["agreement"] is not None and 0.5 <= st["agreement"] <= 1.0 for st in shadows.values()), shadows
    # the comparisons, counted across workers (the ratio gauge is the lowest worker's: a worker that
    # compared nothing exports 0 there), moved by what was sent: one per answered shadow call
    agree = {v: metric_value(text, "healmesh_gateway_shadow_compared_total", agree=v) or 0.0 for v in ("true", "false")}
    assert sum(agree.values()) == calls["ok"] and 0.5 <= agree["true"] / calls["ok"] <= 1.0, agree

    r = redis.Redis(port=redis_srv.port)
    entries = r.xrange(f"{prefix}:features")
    shadow = {f[b"request_id"].decode(): f for _, f in entries if f[b"kind"] == b"shadow"}
    primary = {f[b"request_id"].decode() for _, f in entries if f[b"kind"] == b"primary"}
    assert len(shadow) == calls["ok"] and set(shadow) <= primary == {x.body["request_id"] for x in on}
    one = next(iter(shadow))
    marks = r.hmget(keys.bucket_key(prefix, one), [one, keys.marker_field(one, "shadow")])
    assert marks == [b"1", b"1"]  # both records of the request, each written once
    assert all(json.loads(f[b"data"])["variant"] == "pytorch" and "agree" in json.loads(f[b"data"])
               for f in shadow.values())
    # causal, not a latency bound: the client had each answer before its shadow call returned
    received = {x.body["request_id"]: x.sent_after + x.latency for x in on}
    before_shadow = [received[rid] < float(f[b"ts"]) for rid, f in shadow.items()]
    assert sum(before_shadow) >= 0.9 * len(before_shadow), f"{sum(before_shadow)} of {len(before_shadow)}"


# --- bad input, feedback ---------------------------------------------------------------------------


def test_bad_inputs_get_the_right_4xx_and_leave_no_trace(gateway, redis_srv):
    url, prefix = gateway.url, "hm-main"
    drained(gateway)  # what earlier tests answered is written
    before = stream_len(redis_srv.port, prefix)
    good = anonymous(1, seed=13)[0]
    post = lambda body, **kw: httpx.post(url + "/api/v1/predict", content=body, timeout=10,  # noqa: E731
                                         headers={"content-type": "application/json"}, **kw)
    cases = [
        (b'{"amount": 3', 400, None),
        (json.dumps({k: v for k, v in good.items() if k != "hour"}), 422, "hour"),
        (json.dumps(good | {"amount": "12"}), 422, "amount"),
        (json.dumps(good | {"amount": -4.0}), 422, "amount"),
        (json.dumps(good | {"hour": 2.5}), 422, "hour"),
        (json.dumps(good | {"channel": "telepathy"}), 422, "channel"),
        (json.dumps(good | {"surprise": 1}), 422, "surprise"),
        (json.dumps([good, good | {"geo": "mars"}]), 422, "geo"),
        (json.dumps([]), 422, None),
        (json.dumps("hello"), 422, None),
        (json.dumps([good] * 501), 413, None),
        (b'{"amount": "' + b"9" * 1_100_000 + b'"}', 413, None),
    ]
    for body, status, field in cases:
        r = post(body)
        assert r.status_code == status, (body[:80], r.status_code, r.text[:300])
        if field:
            assert field in {d["field"] for d in r.json()["detail"]}, r.text[:300]
    errs = post(json.dumps([good, good | {"geo": "mars"}])).json()["detail"]
    assert errs[0]["loc"] == ["body", 1, "geo"]
    drained(gateway)  # a record a refused request left would be in Redis by now
    assert stream_len(redis_srv.port, prefix) == before


def test_feedback_stores_ground_truth_idempotently(gateway, redis_srv):
    url, prefix = gateway.url, "hm-main"
    rid = httpx.post(url + "/api/v1/predict", json=anonymous(1, seed=14)[0]).json()["request_id"]
    wait_for(lambda: redis.Redis(port=redis_srv.port).hexists(keys.bucket_key(prefix, rid), rid), timeout=10,
             interval=0.05, what="the record to be logged")
    post = lambda body: httpx.post(url + "/api/v1/feedback", json=body, headers=LABELLER)  # noqa: E731
    assert post({"request_id": keys.new_request_id(time.time()), "label": 1}).status_code == 404
    first = post({"request_id": rid, "label": 1})
    assert first.status_code == 200 and first.json()["status"] == "stored"
    again = post({"request_id": rid, "label": 1})
    assert again.status_code == 200 and again.json()["status"] == "unchanged"
    assert post({"request_id": rid, "label": 0}).status_code == 409
    assert post({"request_id": rid, "label": 7}).status_code == 422
    r = redis.Redis(port=redis_srv.port)
    assert r.hget(keys.bucket_key(prefix, rid), keys.label_field(rid)) == b"1"
    labels = [f for _, f in r.xrange(f"{prefix}:feedback") if f[b"request_id"] == rid.encode()]
    assert len(labels) == 1


def test_metrics_cover_traffic_breakers_weights_log_drift_and_rollout(gateway, redis_srv):
    url = gateway.url
    drained(gateway)

    def counts() -> tuple[float, float]:
        text = httpx.get(url + "/metrics").text
        written = metric_value(text, "healmesh_gateway_feature_log_records_total", state="written") or 0.0
        answered = metric_value(text, "healmesh_gateway_requests_total", outcome="ok") or 0.0
        return written, answered

    written0, answered0 = counts()
    replies = run(url + "/api/v1/predict", anonymous(50, seed=15), concurrency=4)
    no_errors(replies)
    drained(gateway)
    assert counts() == (written0 + 50, answered0 + 50)  # series that exist at 0 from start-up: they moved
    publish_drift(redis_srv.port)

    def drift_exported() -> str | None:
        text = httpx.get(url + "/metrics").text
        return text if metric_value(text, "healmesh_drift_detected") == 1 else None

    text = poll(drift_exported, timeout=15, what="the published drift in /metrics")
    for needle in ['healmesh_gateway_requests_total{model_version="1",outcome="ok",variant="xgboost_stable"}',
                   'healmesh_gateway_request_latency_seconds_bucket',
                   'healmesh_gateway_breaker_state{upstream="pytorch"}',
                   'healmesh_gateway_weight{variant="xgboost_stable"} 0.8', 'healmesh_gateway_effective_weight',
                   'healmesh_gateway_feature_log_records_total{state="written"}',
                   'healmesh_gateway_feature_log_buffered',
                   'healmesh_drift_score{feature="amount",statistic="psi"} 0.31', 'healmesh_drift_detected 1.0',
                   'healmesh_drift_last_check_timestamp_seconds 1.7e+09', 'healmesh_rollout_stage_percent',
                   'healmesh_gateway_redis_up 1.0']:
        assert needle in text, needle


def test_schemathesis_finds_no_server_error(scorers, redis_srv, session_dir):
    """Property-based requests from the gateway's own OpenAPI document, admin routes included."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    gw = start_gateway(session_dir, redis_srv.port, scorer_urls(scorers), tag="schema")
    try:
        st = shutil.which("st", path=str(Path(sys.executable).parent))
        assert st, "schemathesis is a dev dependency"
        done = subprocess.run([st, "run", f"{gw.url}/api/v1/openapi.json", "--checks", "not_a_server_error",
                               "-n", "30", "--request-timeout", "10", "--generation-deterministic",
                               "-H", f"Authorization: Bearer {TOKEN}"],
                              capture_output=True, text=True, timeout=600)
        tail = done.stdout[-3000:]
        print("\n" + tail)
        assert done.returncode == 0, tail + done.stderr[-2000:]
        m = re.search(r"(\d+) generated, (\d+) passed", done.stdout)
        assert m and int(m.group(1)) >= 200 and m.group(1) == m.group(2), tail
        assert httpx.post(gw.url + "/api/v1/predict", json=anonymous(1)[0]).status_code == 200
    finally:
        gw.stop()


def test_a_saturated_gateway_sheds_with_503_and_retry_after(scorers, redis_srv, session_dir):
    gw = start_gateway(session_dir, redis_srv.port, scorer_urls(scorers), tag="full",
                       **limits("ADMISSION", floor=2, ceiling=4))
    slow = [scorers[name].url for name in ("xgboost", "pytorch")]
    try:
        for url in slow:
            httpx.put(url + "/admin/faults", headers=AUTH, json={"latency_ms": 300})
        replies = run(gw.url + "/api/v1/predict", anonymous(64, seed=16), concurrency=32)
        statuses = collections.Counter(r.status for r in replies)
        assert set(statuses) == {200, 503} and statuses[200] >= 4, statuses
        shed = [r for r in replies if r.status == 503]
        assert all(r.body == {"error": "gateway saturated"} and r.headers.get("retry-after") == "1" for r in shed)
        assert httpx.post(gw.url + "/api/v1/predict", json=anonymous(1)[0]).status_code == 200  # one alone fits
        text = httpx.get(gw.url + "/metrics").text
        assert f'healmesh_gateway_rejected_requests_total{{status="503"}} {float(len(shed))}' in text
    finally:
        for url in slow:
            httpx.delete(url + "/admin/faults", headers=AUTH)
        gw.stop()


def limits(scope: str, floor: int, ceiling: int) -> dict[str, str]:
    """Env for a small adaptive limit (``scope``: ADMISSION or UPSTREAM), starting at its ceiling."""
    return {f"HEALMESH_{scope}_LIMIT__MIN_LIMIT": str(floor), f"HEALMESH_{scope}_LIMIT__INITIAL_LIMIT": str(ceiling),
            f"HEALMESH_{scope}_LIMIT__MAX_LIMIT": str(ceiling)}


def test_far_above_its_limits_the_gateway_answers_fast_503s_and_no_client_waits_out(scorers, redis_srv,
                                                                                     session_dir):
    """256 clients against limits of a few requests per worker (issue 12): every request is
    answered (no client timeout, no connection error), the ones past the limits with 503 +
    Retry-After before any scorer call (the admission limit, or every variant's own limit), the
    admitted ones by a model, never by the fallback scorer or the rules as overflow."""
    gw = start_gateway(session_dir, redis_srv.port, scorer_urls(scorers), tag="limits",
                       **limits("ADMISSION", floor=2, ceiling=8), **limits("UPSTREAM", floor=1, ceiling=2))
    try:
        replies = run(gw.url + "/api/v1/predict", anonymous(3_000, seed=21), concurrency=256, timeout=30.0)
        statuses = collections.Counter(r.status for r in replies)
        assert set(statuses) == {200, 503} and len(replies) == 3_000, statuses  # 0: a client timeout or reset
        assert all(r.body == {"error": "gateway saturated"} and r.headers["retry-after"] == "1"
                   for r in replies if r.status == 503)
        by_models = [r for r in replies if r.status == 200 and not r.body["fallback"]]
        not_by_models = [r for r in replies if r.status == 200 and r.body["fallback"]]
        assert {r.body["variant"] for r in by_models} <= {"xgboost_stable", "pytorch"}
        text = httpx.get(gw.url + "/metrics").text
        shed = {w: metric_value(text, "healmesh_gateway_shed_total", where=w) or 0.0
                for w in ("admission", "variants", "shadow")}
        assert shed["admission"] + shed["variants"] == statuses[503] and shed["admission"] > 0, shed
        assert shed["variants"] > 0, shed  # the variants' own limits (2 each) are below admission's (8)
        variants = ("xgboost_stable", "pytorch")
        calls = sum(metric_value(text, "healmesh_gateway_upstream_calls_total", upstream=v, result="ok") or 0.0
                    for v in variants)
        assert calls == len(by_models)  # a shed request made no scorer call
        # the fallback scorer and the rules answer faults only (a call that failed), never overflow
        faults = sum(metric_value(text, "healmesh_gateway_upstream_calls_total", upstream=v, result=r) or 0.0
                     for v in variants for r in ("error", "timeout", "unreachable"))
        assert len(not_by_models) <= faults, (len(not_by_models), faults)
        # 8 a worker, 2 workers
        assert (metric_value(text, "healmesh_gateway_concurrency_limit", scope="admission") or 99) <= 16
        for st in worker_states(gw).values():
            assert st["limits"]["admission"]["limit"] <= 8 and st["limits"]["xgboost_stable"]["limit"] <= 2
    finally:
        gw.stop()


def test_an_idle_client_connection_is_kept_past_uvicorns_5s_default(gateway):
    """Servers run with --timeout-keep-alive (settings.server_keep_alive_s): a pooled client
    connection idle for 6 s is still open, so a client never sends into a closing socket."""
    import http.client

    port = int(gateway.url.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/livez")
        first = conn.getresponse()
        first.read()
        assert first.status == 200 and not first.will_close
        sock = conn.sock
        time.sleep(6.0)
        conn.request("GET", "/livez")  # on the same socket: a closed one raises RemoteDisconnected
        assert conn.sock is sock
        second = conn.getresponse()
        second.read()
        assert second.status == 200
    finally:
        conn.close()
