"""A gateway server with two workers (the default on two CPUs or more) against real Redis and
scorers: routing state shared through Redis, admin changes and their audit, metrics over both
workers, and a worker killed under load.

Every request here goes out on a new connection (``Connection: close``), so the kernel hands it
to whichever worker accepts first and both workers answer; each answer names its worker
(``x-healmesh-worker``, the worker's metrics instance id)."""

from __future__ import annotations

import collections
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import psutil
import pytest
import redis

from healmesh.ops import procs
from healmesh.settings import Settings
from healmesh.urls import local_redis_url, local_url

from .conftest import (
    GATEWAY_FAST,
    ROOT,
    TOKEN,
    each_worker,
    scorer_env,
    scorer_urls,
    start_gateway,
    worker_pids,
    worker_states,
)
from .load import transactions

pytestmark = pytest.mark.integration
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PREFIX = "hm-pair"
POLL_S = Settings().control_poll_s  # what the gateway polls with (0.5 s)
SETTLE_S = POLL_S + 2.5  # one poll and a generous margin: asserted behaviour starts after this


def anonymous(n: int, seed: int) -> list[dict[str, Any]]:
    """Transactions without a card id: routed at random by the weights."""
    return [{k: v for k, v in tx.items() if k != "card_id"} for tx in transactions(n, seed=seed)]


def admin(url: str, method: str, path: str, **kw: Any) -> httpx.Response:
    return httpx.request(method, f"{url}/api/v1/admin{path}", headers=AUTH, timeout=30, **kw)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1) -> float:
    """Seconds until ``predicate()`` held."""
    t0 = time.monotonic()
    while not predicate():
        assert time.monotonic() - t0 < timeout, f"timed out after {timeout}s waiting for {what}"
        time.sleep(interval)
    return time.monotonic() - t0


@dataclass
class Shot:
    sent: float  # monotonic, just before the request went out
    done: float
    status: int  # 0: no HTTP answer (the connection broke)
    worker: str | None
    body: Any
    error: str | None = None


class Load:
    """``clients`` threads posting predictions, each on a new connection, until ``stop()`` (or,
    with ``total``, until that many were sent)."""

    def __init__(self, url: str, bodies: Sequence[dict[str, Any]], clients: int, total: int | None = None) -> None:
        self.url, self.bodies, self.total = url + "/api/v1/predict", bodies, total
        self.shots: list[Shot] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sent = 0
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]

    def _next(self) -> int | None:
        with self._lock:
            if self._stop.is_set() or (self.total is not None and self._sent >= self.total):
                return None
            self._sent += 1
            return self._sent - 1

    def _client(self) -> None:
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(timeout=10, limits=limits, headers={"Connection": "close"}) as client:
            while (i := self._next()) is not None:
                t0 = time.monotonic()
                try:
                    r = client.post(self.url, json=self.bodies[i % len(self.bodies)])
                    shot = Shot(t0, time.monotonic(), r.status_code, r.headers.get("x-healmesh-worker"), r.json())
                except httpx.HTTPError as exc:
                    shot = Shot(t0, time.monotonic(), 0, None, None, type(exc).__name__)
                with self._lock:
                    self.shots.append(shot)

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop()

    def stop(self) -> list[Shot]:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)
        return self.shots

    def wait(self) -> list[Shot]:
        for t in self._threads:
            t.join(timeout=300)
        return self.shots

    def answered_by(self, worker: str, sent_after: float = 0.0) -> int:
        with self._lock:
            return sum(1 for s in self.shots if s.worker == worker and s.sent >= sent_after)


def scrape_total(text: str, name: str, **labels: str) -> float:
    """The sum of a series' samples over all label sets matching ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            head, value = line.rsplit(" ", 1)
            if all(f'{k}="{v}"' in head for k, v in labels.items()):
                total += float(value)
    return total


def samples(text: str, name: str) -> dict[str, float]:
    """``series{labels}`` -> value for one metric name."""
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith(name + "{") or line.startswith(name + " ")}


def instance_ids(text: str) -> set[str]:
    return {head.split('instance_id="', 1)[1].split('"', 1)[0]
            for head in samples(text, "healmesh_gateway_instance_start_time_seconds")}


def control_versions(pair: procs.ServerProcess) -> dict[str, int]:
    return {w: st["control"]["version"] for w, st in worker_states(pair).items()}


def restore_defaults(url: str, pair: procs.ServerProcess) -> None:
    admin(url, "PUT", "/shadow", json={"enabled": False, "why": "restore"})
    admin(url, "PUT", "/weights", json={"weights": {"xgboost_stable": 0.8, "pytorch": 0.2}, "why": "restore"})
    version = redis_version(pair)
    wait_for(lambda: set(control_versions(pair).values()) == {version}, 10, "every worker on the restored state")


def redis_port(pair: procs.ServerProcess) -> int:
    return int(pair.env["HEALMESH_REDIS_URL"].rsplit(":", 1)[1].split("/", 1)[0])


def redis_version(pair: procs.ServerProcess) -> int:
    return int(redis.Redis(port=redis_port(pair)).hget(f"{PREFIX}:control", "version") or 0)


@pytest.fixture(scope="module")
def pair(scorers, redis_srv, session_dir) -> Iterator[procs.ServerProcess]:
    gw = start_gateway(session_dir, redis_srv.port, scorer_urls(scorers), tag="pair", HEALMESH_GATEWAY_WORKERS="2")
    try:
        assert len(worker_pids(gw.popen.pid)) == 2
        yield gw
    finally:
        gw.stop()


# --- 1. routing state: a change through one worker reaches the other within a poll -----------------

def test_a_weight_change_through_one_worker_reaches_both(pair):
    """Old weights 80/20, new weights 0/100 (all PyTorch): an `xgboost_stable` answer is routed by
    the old weights, nothing else can send one there (failover only goes to weighted variants).
    Measured: how long after the acknowledgement each worker still routed by the old weights,
    and when each worker's admin state first showed the new version. Asserted: from one poll
    (+ a margin) after the acknowledgement, no answer from either worker follows the old weights."""
    url = pair.url
    workers = set(worker_states(pair))
    assert len(workers) == 2
    bodies = anonymous(500, seed=40)
    try:
        with Load(url, bodies, clients=6) as load:
            wait_for(lambda: all(load.answered_by(w) >= 20 for w in workers), 60, "both workers to answer")
            t_sent = time.monotonic()
            r = admin(url, "PUT", "/weights", json={"weights": {"xgboost_stable": 0, "pytorch": 1},
                                                     "why": "workers test: all to pytorch", "who": "pytest"})
            t_ack = time.monotonic()
            assert r.status_code == 200, r.text
            version, changed_by = r.json()["version"], r.headers["x-healmesh-worker"]
            # when each worker's own state first showed the new version (fresh connections; an
            # upper bound: a worker is only seen when it happens to answer)
            seen: dict[str, float] = {}

            def all_seen() -> bool:
                for w, st in worker_states(pair, timeout=10).items():
                    if st["control"]["version"] >= version:
                        seen.setdefault(w, time.monotonic() - t_ack)
                return set(seen) == workers

            wait_for(all_seen, 10, "every worker to show the new version", interval=0.0)
            # traffic after the settle time, to both workers (the kernel decides who accepts)
            wait_for(lambda: all(load.answered_by(w, t_ack + SETTLE_S) >= 20 for w in workers), 60,
                     "both workers to answer after the settle time")
        shots = load.shots
    finally:
        restore_defaults(url, pair)
    bad = [s for s in shots if s.status != 200]
    assert not bad, [(s.status, s.error) for s in bad[:3]]
    before = [s for s in shots if s.done < t_sent]
    after = [s for s in shots if s.sent >= t_ack + SETTLE_S]
    per_worker_before = collections.Counter((s.worker, s.body["variant"]) for s in before)
    assert all(per_worker_before[(w, "xgboost_stable")] > 0 for w in workers), per_worker_before  # old weights
    per_worker_after = collections.Counter((s.worker, s.body["variant"]) for s in after)
    old = {w: sum(1 for s in after if s.worker == w and s.body["variant"] != "pytorch") for w in workers}
    lag = {w: max((s.sent - t_ack for s in shots if s.worker == w and s.sent >= t_ack
                   and s.body["variant"] == "xgboost_stable"), default=0.0) for w in workers}
    print(f"\nchange acknowledged {1000 * (t_ack - t_sent):.0f} ms after it was sent, by worker {changed_by}; "
          f"last request still routed by the old weights, sent after the acknowledgement (ms): "
          f"{ {w[:6]: round(1000 * v) for w, v in lag.items()} }; state showed the new version after (ms): "
          f"{ {w[:6]: round(1000 * v) for w, v in seen.items()} }; answers after {SETTLE_S:.1f} s: "
          f"{dict(per_worker_after)}")
    assert all(sum(1 for s in after if s.worker == w) >= 20 for w in workers), per_worker_after
    assert old == {w: 0 for w in workers}, per_worker_after


# --- 2. every admin change reaches both workers and is audited once ----------------------------------

def test_shadow_and_rollout_changes_reach_both_workers_and_are_audited_once(pair, scorers, settings, redis_srv):
    from healmesh import registry

    url, name = pair.url, settings.xgb_registered_name
    r = redis.Redis(port=redis_srv.port)
    last_id = (r.xrevrange(f"{PREFIX}:audit", count=1) or [(b"0-0", {})])[0][0].decode()
    tag = f"workers-test-{time.time_ns()}"
    registry.set_alias(settings, name, "challenger", "1")
    try:
        assert httpx.post(scorers["xgboost"].url + "/admin/reload", headers=AUTH).json()["slots"]["canary"]
        changes = [("shadow", {"enabled": True, "target": "pytorch"}),
                   ("rollout", {"stage": 50, "canary_version": "1", "status": "running"})]
        answered_by = []
        for kind, body in changes:
            resp = admin(url, "PUT", f"/{kind}", json={**body, "why": f"{tag} {kind}", "who": "pytest"})
            assert resp.status_code == 200, resp.text
            answered_by.append(resp.headers["x-healmesh-worker"])
        version = resp.json()["version"]
        took = wait_for(lambda: set(control_versions(pair).values()) == {version}, 10,
                        "both workers on the new state")
        states = worker_states(pair)
        for st in states.values():
            control = st["control"]
            assert control["shadow"] == {"enabled": True, "target": "pytorch"}
            assert (control["rollout"]["stage"], control["rollout"]["status"]) == (50, "running")
            assert st["effective_weights"]["xgboost_canary"] == pytest.approx(0.4)
        # both route to the canary and send shadow calls
        with Load(url, anonymous(400, seed=41), clients=6) as load:
            def canary() -> collections.Counter[str | None]:
                return collections.Counter(s.worker for s in list(load.shots)
                                           if s.status == 200 and s.body["variant"] == "xgboost_canary")

            wait_for(lambda: all(canary()[w] >= 10 for w in states), 60, "canary answers from both workers")
        shots = load.shots
        assert {s.status for s in shots} == {200}
        canary_by = canary()
        wait_for(lambda: all(st["shadow"]["in_flight"] == 0 for st in worker_states(pair).values()), 30,
                 "the last shadow calls to land")
        shadow = {w: st["shadow"] for w, st in worker_states(pair).items()}
        assert all(s["agreement"] is not None for s in shadow.values()), shadow
    finally:
        admin(url, "PUT", "/rollout", json={"stage": 0, "status": "rolled_back", "why": f"{tag} restore"})
        restore_defaults(url, pair)
        registry.delete_alias(settings, name, "challenger")
        httpx.post(scorers["xgboost"].url + "/admin/reload", headers=AUTH)
    entries = [{k.decode(): v.decode() for k, v in f.items()}
               for _, f in r.xrange(f"{PREFIX}:audit", min=f"({last_id}")]
    ours = [e for e in entries if e["why"] in (f"{tag} shadow", f"{tag} rollout")]
    print(f"\nchanges answered by workers {answered_by}; both workers on the new state after {took * 1000:.0f} ms "
          f"(upper bound); canary answers per worker {dict(canary_by)}")
    assert [e["why"] for e in ours] == [f"{tag} shadow", f"{tag} rollout"]  # each once, in order
    assert int(ours[1]["version"]) == int(ours[0]["version"]) + 1 == version


def test_an_admin_read_after_a_write_answers_the_write_whichever_worker_reads(pair):
    """A DAG sets the rollout, then reads it back: the read may land on the other worker, which
    had not polled Redis yet and answered the state before the write (the landing CI of issue 9
    saw a rollout read back at stage 100 after the DAG had set it to 0). Each read answers the
    latest write. The reads are on new connections, so both workers answer some of them."""
    url = pair.url
    stale, readers, writers = [], collections.Counter(), []
    try:
        for i in range(12):
            want = {"enabled": i % 2 == 0, "target": "pytorch"}
            put = admin(url, "PUT", "/shadow", json={**want, "why": f"read-your-writes {i}", "who": "pytest"})
            assert put.status_code == 200, put.text
            writers.append(writer := put.headers["x-healmesh-worker"])
            for _ in range(6):
                got = admin(url, "GET", "/shadow")
                reader = got.headers["x-healmesh-worker"]
                readers[reader == writer] += 1
                if got.json() != want:
                    stale.append((i, reader == writer, got.json()))
    finally:
        restore_defaults(url, pair)
    print(f"\nreads by the writing worker / the other: {readers[True]} / {readers[False]}")
    assert readers[False] > 0, "no read reached the other worker: the test did not test anything"
    assert not stale, stale


# --- 3. /metrics: counters over both workers, gauges one value -------------------------------------

def test_metrics_count_every_request_whichever_worker_answers_the_scrape(pair):
    url = pair.url
    before = httpx.get(url + "/metrics").text
    workers = set(worker_states(pair))
    with Load(url, anonymous(600, seed=42), clients=8) as load:  # until both answered 300
        wait_for(lambda: all(load.answered_by(w) >= 300 for w in workers), 120, "300 answers from each worker")
    shots = load.shots
    n = len(shots)
    assert [s.status for s in shots] == [200] * n
    per_worker = collections.Counter(s.worker for s in shots)
    assert set(per_worker) == workers, per_worker
    version = redis_version(pair)

    def settled(text: str) -> bool:  # every worker has published its gauges since the load ended
        return scrape_total(text, "healmesh_gateway_in_flight") == 0

    wait_for(lambda: all(settled(r.text) for r in each_worker(url, "/metrics", 2).values()), 10,
             "the in-flight gauges to come back to 0")
    scrapes = each_worker(url, "/metrics", 2)
    assert set(scrapes) == set(per_worker)
    for worker, resp in scrapes.items():
        text = resp.text
        for name, labels in (("healmesh_gateway_requests_total", {}),
                             ("healmesh_gateway_request_latency_seconds_count", {}),
                             ("healmesh_gateway_upstream_calls_total", {"result": "ok"})):
            grew = scrape_total(text, name, **labels) - scrape_total(before, name, **labels)
            assert grew == n, (worker, name, grew)
        assert instance_ids(text) == set(per_worker)  # one start time per live worker
        for gauge, value in (("healmesh_gateway_in_flight", 0.0), ("healmesh_gateway_redis_up", 1.0),
                             ("healmesh_gateway_control_version", float(version))):
            assert list(samples(text, gauge).values()) == [value], (gauge, samples(text, gauge))
        weights = samples(text, "healmesh_gateway_weight")
        assert weights == {f'healmesh_gateway_weight{{variant="{v}"}}': w
                           for v, w in (("pytorch", 0.2), ("xgboost_canary", 0.0), ("xgboost_stable", 0.8))}
    print(f"\n{n} requests answered {dict(per_worker)} by worker; every scrape (by {sorted(scrapes)}) counts {n}")


# --- 4. a worker killed under load -------------------------------------------------------------------

def test_a_killed_worker_is_replaced_while_the_other_serves(pair):
    """SIGKILL to one worker (a child of the BentoML arbiter) while 8 clients send predictions,
    each on a new connection. Only requests the killed worker held may fail: sent before it was
    gone. The other worker answers throughout; the arbiter starts a new worker (new pid) that
    serves; the metrics forget the dead worker's gauges and keep its counts."""
    url, clients = pair.url, 8
    states = worker_states(pair)
    pids = {st["worker"]["pid"]: w for w, st in states.items()}
    assert set(pids) == worker_pids(pair.popen.pid)
    victim_pid = max(pids)
    victim, survivor = pids[victim_pid], next(w for p, w in pids.items() if p != victim_pid)
    counted_before = scrape_total(httpx.get(url + "/metrics").text, "healmesh_gateway_requests_total")
    with Load(url, anonymous(500, seed=43), clients=clients) as load:
        wait_for(lambda: load.answered_by(victim) >= 30 and load.answered_by(survivor) >= 30, 60,
                 "both workers to answer")
        t_kill, wall_kill = time.monotonic(), time.time()
        os.kill(victim_pid, signal.SIGKILL)

        def gone() -> bool:
            try:
                return psutil.Process(victim_pid).status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return True

        wait_for(gone, 10, "the killed worker to be gone", interval=0.005)
        t_gone = time.monotonic()
        new_pids: set[int] = set()

        def respawned() -> bool:
            new_pids.update(worker_pids(pair.popen.pid) - set(pids))
            return bool(new_pids)

        wait_for(respawned, 60, "a new worker process", interval=0.05)
        t_spawned = time.monotonic()
        (new_pid,) = new_pids
        started = psutil.Process(new_pid).create_time()
        known = {victim, survivor}
        wait_for(lambda: any(s.worker not in known for s in list(load.shots) if s.worker), 60,
                 "the new worker to answer", interval=0.05)
        t_first = min(s.done for s in list(load.shots) if s.worker and s.worker not in known)

        def both_ready() -> bool:  # the new worker probed before it served, and counts its server's grace
            try:
                return {r.status_code for r in each_worker(url, "/readyz", 2, timeout=10).values()} == {200}
            except (httpx.HTTPError, AssertionError):
                return False

        ready_after = wait_for(both_ready, 30, "both workers ready")
        time.sleep(1.0)
    shots = load.shots
    replacement = {s.worker for s in shots if s.worker and s.worker not in known}
    assert len(replacement) == 1
    errors = [s for s in shots if s.status == 0]
    others = collections.Counter(s.status for s in shots if s.status != 0)
    meanwhile = [s for s in shots if t_gone <= s.sent and s.done < t_first]  # before the new one answered
    print(f"\n{len(shots)} requests, {clients} clients: {len(errors)} failed "
          f"({dict(collections.Counter(s.error for s in errors))}), all sent before the worker was gone "
          f"({1000 * (t_gone - t_kill):.0f} ms after the kill); new worker pid {new_pid} started "
          f"{started - wall_kill:.2f} s after the kill (seen at {t_spawned - t_kill:.2f} s), first answer "
          f"{t_first - t_kill:.2f} s after it, both /readyz 200 {ready_after:.2f} s after that; "
          f"meanwhile the survivor answered {len(meanwhile)}")
    assert others == {200: len(shots) - len(errors)}, others
    assert all(s.sent < t_gone for s in errors), [(s.sent - t_kill, s.error) for s in errors]
    assert len(errors) <= clients  # at most the one request each client had in flight
    assert meanwhile and {s.worker for s in meanwhile} == {survivor}
    # the metrics: the dead worker's gauges are gone, its counts stay
    text = each_worker(url, "/metrics", 2)
    for resp in text.values():
        assert instance_ids(resp.text) == {survivor} | replacement
        counted = scrape_total(resp.text, "healmesh_gateway_requests_total") - counted_before
        assert len(shots) - len(errors) <= counted <= len(shots), counted
    wait_for(lambda: scrape_total(httpx.get(url + "/metrics").text, "healmesh_gateway_in_flight") == 0, 10,
             "in flight back to 0 (the dead worker's gauge forgotten)")
    assert {r.status_code for r in each_worker(url, "/livez", 2).values()} == {200}  # replaced: alive
    # the feature log: everything the live workers answered is in the stream; what the killed
    # worker had answered but not yet written (its buffer, flushed every 20 ms) is lost with it
    store = redis.Redis(port=redis_port(pair))

    def unlogged() -> list[Shot]:
        logged = {f[b"request_id"].decode() for _, f in store.xrange(f"{PREFIX}:features")}
        return [s for s in shots if s.status == 200 and s.body["request_id"] not in logged]

    wait_for(lambda: all(s.worker == victim for s in unlogged()), 30, "the live workers' records", interval=0.5)
    missing = collections.Counter(s.worker for s in unlogged())
    print(f"answered but not in the feature log, by worker: {dict(missing)} (victim {victim[:6]})")
    assert set(missing) <= {victim}


def test_in_a_bentoml_container_a_dead_worker_stays_dead_and_livez_says_so(scorers, redis_srv, session_dir):
    """BentoML's container images set BENTOML_CONTAINERIZED, and then its supervisor replaces no
    worker (it expects the container to be restarted): a killed worker would leave the server on
    half its workers for good. `/livez` answers 503 once the server has been short of a worker for
    HEALMESH_GATEWAY_WORKER_MISSING_S (3 s here, 60 s by default), so the orchestrator restarts
    it; meanwhile the other worker serves."""
    gw = start_gateway(session_dir, redis_srv.port, scorer_urls(scorers), tag="boxed", HEALMESH_GATEWAY_WORKERS="2",
                       BENTOML_CONTAINERIZED="true", HEALMESH_GATEWAY_WORKER_MISSING_S="3")
    try:
        pids = worker_pids(gw.popen.pid)
        assert len(pids) == 2
        assert {r.status_code for r in each_worker(gw.url, "/livez", 2).values()} == {200}
        victim = max(pids)
        os.kill(victim, signal.SIGKILL)
        t_kill = time.monotonic()
        took = wait_for(lambda: httpx.get(gw.url + "/livez", timeout=10).status_code == 503, 60,
                        "/livez to report the missing worker", interval=0.2)
        dead = httpx.get(gw.url + "/livez", timeout=10)
        assert dead.status_code == 503 and "1 of 2 workers" in dead.text, dead.text
        time.sleep(max(0.0, t_kill + 12.0 - time.monotonic()))  # past BentoML's 10 s supervision round
        assert worker_pids(gw.popen.pid) == pids - {victim}  # nobody replaced it
        answers = [httpx.post(gw.url + "/api/v1/predict", json=body, timeout=10) for body in anonymous(20, seed=44)]
        assert {r.status_code for r in answers} == {200}  # the other worker serves
        print(f"\n/livez 503 {took:.1f} s after the kill ({dead.text!r}); "
              f"12 s later still one worker")
    finally:
        gw.stop()


def test_a_worker_not_yet_ready_asks_its_scorers_when_readyz_is_asked(trained, mlflow_url, scorers, redis_srv,
                                                                       session_dir):
    """Each worker decides readiness from its own probes, on its own clock. A worker not yet ready
    answers `/readyz` from a probe round of its own, not from its loop's last one (a landing CI run
    saw one worker of the built mesh say 200 and the next request, to its sibling, 503). Here the
    probe loop waits an hour and the xgboost scorer starts after the gateway: the old gateway stayed
    503 until that next round; now each worker says 200 once the scorer answers."""
    late_port = procs.free_port()
    env = {"HEALMESH_REDIS_URL": local_redis_url(redis_srv.port), "HEALMESH_ADMIN_TOKEN": TOKEN,
           "HEALMESH_KEY_PREFIX": "hm-late", **GATEWAY_FAST, **scorer_urls(scorers),
           "HEALMESH_XGB_URL": local_url(late_port), "HEALMESH_GATEWAY_WORKERS": "2",
           "HEALMESH_PROBE_INTERVAL_S": "3600", "HEALMESH_READY_GRACE_S": "3600"}
    gw = procs.bentoml_server("gateway-late", "gateway.service:Gateway", procs.free_port(), session_dir / "logs",
                              env=env, cwd=ROOT)
    gw.start()
    late = None
    try:
        wait_for(lambda: procs.answers(gw.port, "/livez"), 120, "the gateway to serve")
        assert len(worker_pids(gw.popen.pid)) == 2
        early = httpx.get(gw.url + "/readyz", timeout=10)
        assert early.status_code == 503 and "xgboost_stable" in early.text, early.text
        late = procs.bentoml_server("xgboost-late", procs.SCORERS["xgboost"], late_port, session_dir / "logs",
                                    env=scorer_env(mlflow_url), cwd=ROOT).launch()

        def each_ready() -> bool:
            try:
                return {r.status_code for r in each_worker(gw.url, "/readyz", 2, timeout=10).values()} == {200}
            except (httpx.HTTPError, AssertionError):
                return False

        waited = wait_for(each_ready, 60, "both workers to say ready", interval=0.5)
        print(f"\nboth workers ready {waited:.1f} s after the late scorer was")
    finally:
        if late is not None:
            late.stop()
        gw.stop()
