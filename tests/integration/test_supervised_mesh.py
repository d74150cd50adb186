"""The mesh as `make up` runs it (`healmesh up --no-airflow`, a private HEALMESH_HOME, free
ports), supervised: a scorer SIGKILLed under load comes back with no command typed and takes
its share again, `status --json` tells it, and `down` / `up` / `up` leave no stray process.

Seconds are printed (`-s`), not asserted: the chaos benchmark measures them on a quiet machine
(`bench/results/chaos.md`); the deadlines here only stop a test that would wait forever."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from healmesh.ops import procs
from healmesh.settings import default_gateway_workers

from .conftest import UpMesh
from .load import Reply, hammer, transactions

pytestmark = pytest.mark.integration


Mesh = UpMesh


@pytest.fixture(scope="module")
def mesh(up_mesh: UpMesh) -> UpMesh:
    return up_mesh


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _state(mesh: Mesh) -> dict[str, Any]:
    return httpx.get(mesh.url("gateway") + "/api/v1/admin/state", headers=mesh.admin, timeout=5).json()


def _full_share(mesh: Mesh) -> bool:
    """XGBoost's breaker closed and its full 80 % share back on EVERY gateway worker: breakers and their
    ramps are each worker's own, and a request for the state lands on either (a landing CI run saw one
    worker report the full share while the other, still ramping, sent the test's card to PyTorch)."""
    workers = default_gateway_workers()
    seen: dict[int, bool] = {}
    for _ in range(50):
        state = _state(mesh)
        seen[state["worker"]["pid"]] = abs(state["effective_weights"]["xgboost_stable"] - 0.8) < 1e-9 and \
            state["breakers"]["xgboost_stable"]["state"] == "closed"
        if len(seen) == workers:
            break
    return len(seen) == workers and all(seen.values())


def wait_for(predicate, timeout: float, what: str) -> float:
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.1)
    return time.monotonic() - start


def test_a_scorer_killed_under_load_comes_back_by_itself_with_its_share(mesh):
    sup = mesh.supervisor
    (old,) = sup.pids("xgboost")
    replies: list[Reply] = []
    bodies = transactions(200_000, seed=77)
    stop = threading.Event()

    def load() -> None:  # 32 clients until told to stop (bounded: at most 200,000 requests)
        async def go() -> None:
            chunk = 500
            for i in range(0, len(bodies), chunk):
                if stop.is_set():
                    return
                replies.extend(await hammer(mesh.url("gateway") + "/api/v1/predict", bodies[i:i + chunk], 32))
        asyncio.run(go())

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    wait_for(lambda: len(replies) >= 1_000, 120, "load to run")
    assert procs.kill_tree(old)  # SIGKILL to the arbiter and its workers, as a crash would
    try:
        ready_s = wait_for(lambda: sup.pids("xgboost") not in ([], [old]) and _ready(mesh.url("xgb")), 120,
                           "the supervisor to start the scorer again")
        share_s = wait_for(lambda: _full_share(mesh), 180, "the scorer's full share")
        print(f"\nxgboost ready {ready_s:.1f}s after the SIGKILL, full 80 % share back after {share_s + ready_s:.1f}s")
    finally:
        stop.set()
        loader.join(timeout=120)
    before = len(replies)
    after_share = asyncio.run(hammer(mesh.url("gateway") + "/api/v1/predict", transactions(2_000, seed=78), 32))
    errors = [r for r in replies + after_share if r.status != 200]
    assert before > 1_000 and not errors, errors[:3]
    share = sum(r.body["variant"] == "xgboost_stable" for r in after_share) / len(after_share)
    print(f"{before} requests during the kill, 0 errors; xgboost_stable share afterwards {share:.1%}")
    assert 0.7 < share < 0.9  # 80 % by weight, 2,000 distinct cards


def test_a_half_open_breaker_gets_its_probes_from_one_card(mesh):
    """One card replayed (sticky routing): its point lies in XGBoost's share when all is well
    and in PyTorch's while XGBoost's breaker is half-open (ramp share). The breaker must still
    get its probe calls and close once the scorer is back."""
    from healmesh.policies import routing

    card = next(tx for tx in transactions(5_000, seed=91) if 0.55 < routing.key_point(str(tx["card_id"])) < 0.75)
    sup = mesh.supervisor
    (old,) = sup.pids("xgboost")
    stop = threading.Event()
    replies: list[Reply] = []

    def load() -> None:
        async def go() -> None:
            while not stop.is_set():
                replies.extend(await hammer(mesh.url("gateway") + "/api/v1/predict", [card] * 200, 16))
        asyncio.run(go())

    loader = threading.Thread(target=load, daemon=True)
    loader.start()
    try:
        wait_for(lambda: len(replies) >= 200, 60, "load to run")
        assert {r.body["variant"] for r in replies[-100:]} == {"xgboost_stable"}  # the card's variant
        assert procs.kill_tree(old)
        wait_for(lambda: sup.pids("xgboost") not in ([], [old]) and _ready(mesh.url("xgb")), 120,
                 "the supervisor to start the scorer again")
        closed_s = wait_for(lambda: _state(mesh)["breakers"]["xgboost_stable"]["state"] == "closed", 120,
                            "the breaker to close on one card's traffic")
        print(f"\none card: breaker closed {closed_s:.1f}s after the scorer was ready")
        wait_for(lambda: _full_share(mesh), 120, "the full share back on every worker")
        # replies arrive a batch of 200 at a time: the batch in flight may have started before the
        # full share was back; the one after it started after
        n = len(replies)
        wait_for(lambda: len(replies) >= n + 400, 120, "two more batches")
        assert {r.body["variant"] for r in replies[n + 200:n + 400]} == {"xgboost_stable"}  # sticky again
    finally:
        stop.set()
        loader.join(timeout=60)
    assert all(r.status == 200 for r in replies), [r for r in replies if r.status != 200][:3]


def test_status_json_tells_each_process_its_restarts_and_no_secret(mesh):
    done = mesh.cli("status", "--json", timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads(done.stdout)
    procs_by_name = {p["name"]: p for p in report["processes"]}
    assert set(procs_by_name) == {"redis", "xgboost", "pytorch", "fallback", "gateway", "alertmanager",
                                  "prometheus", "archiver"}  # MLflow is the session's
    for p in procs_by_name.values():
        assert p["state"] == "ready" and p["pid"] and p["uptime_s"] is not None and Path(p["log"]).is_file(), p
    assert procs_by_name["xgboost"]["restarts"] == 2 and procs_by_name["pytorch"]["restarts"] == 0  # killed twice
    assert procs_by_name["gateway"]["url"] == mesh.url("gateway")
    assert report["redis"]["url"].startswith("redis://") and ":***@" not in report["redis"]["url"]
    password = (mesh.home / "secrets" / "redis_password").read_text().strip()
    assert password not in done.stdout
    assert report["gateway"]["breakers"]["xgboost_stable"] == "closed" and report["healthy"] is True


def test_down_up_and_up_again_leave_no_stray_process(mesh):
    assert len(mesh.ours()) >= 13  # supervisor, 8 programs, 4 BentoML workers
    done = mesh.cli("down", timeout=180)
    assert done.returncode == 0, done.stderr
    assert mesh.ours() == [], [p.cmdline()[:3] for p in mesh.ours()]
    down_status = mesh.cli("status", "--json", timeout=120)
    assert down_status.returncode == 1 and json.loads(down_status.stdout)["healthy"] is False
    assert not any(procs.port_open(mesh.ports[n])
                   for n in ("gateway", "xgb", "torch", "fallback", "redis", "prometheus", "alertmanager"))

    done = mesh.cli("up", "--no-airflow")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    pids = {name: mesh.supervisor.pids(name) for name in ("redis", "xgboost", "pytorch", "fallback", "gateway",
                                                           "alertmanager", "prometheus")}
    again = mesh.cli("up", "--no-airflow")
    assert again.returncode == 0 and "nothing to start" in again.stdout, again.stdout[-2000:]
    assert {name: mesh.supervisor.pids(name) for name in pids} == pids  # a no-op

    assert mesh.cli("down", timeout=180).returncode == 0
    assert mesh.ours() == []
    assert not any(procs.port_open(mesh.ports[n])
                   for n in ("gateway", "xgb", "torch", "fallback", "redis", "prometheus", "alertmanager"))
    done = mesh.cli("up", "--no-airflow")  # for the fixture's own `down`
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
