"""Alerts reach someone: a real Prometheus and a real Alertmanager (configs rendered by
healmesh.ops.alerting) watch a mesh; a killed scorer opens its breaker, the real HealmeshBreakerOpen
rule fires, and the Alertmanager posts it to the gateway, which records it as a lifecycle event
(the status page shows it); the scorer back, the breaker closes and the alert's resolution
arrives the same way. The webhook route itself: credential, size, validation, dedup."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from healmesh import credentials
from healmesh.control import events
from healmesh.ops import alerting, procs
from healmesh.settings import Settings

from .conftest import (
    LABELLER_TOKEN,
    ROOT,
    TOKEN,
    scorer_env,
    scorer_urls,
    start_gateway,
    start_scorer,
)
from .load import run, transactions

pytestmark = pytest.mark.integration
PREFIX = "hm-alerts"


def wait_for(probe: Callable[[], Any], timeout: float, what: str, interval: float = 1.0) -> Any:
    """``probe()``'s first truthy answer within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def alert_events(redis_port: int, alertname: str, kind: str | None = None) -> list[dict[str, Any]]:
    client = redis.Redis(port=redis_port)
    return [e for e in events.recent(client, PREFIX, count=500)
            if e["data"].get("alertname") == alertname and (kind is None or e["kind"] == kind)]


@pytest.fixture(scope="module")
def mesh(trained, mlflow_url, scorers, redis_srv, session_dir: Path) -> Iterator[dict[str, Any]]:
    """A gateway of its own (it takes the alerts token) in front of an XGBoost scorer of its own
    (the alert test kills it) and the session's PyTorch and fallback scorers."""
    home = session_dir / "alerting-home"
    token = credentials.alerts_token(Settings(home=home, alerts_token=None))
    xgb = start_scorer("xgboost", session_dir, scorer_env(mlflow_url), tag="-alerts")
    mesh: dict[str, Any] = {"home": home, "token": token, "xgboost": xgb}

    def restart_xgboost() -> procs.ServerProcess:
        """The killed scorer again, on its port (the gateway and Prometheus know that one)."""
        again = procs.bentoml_server("xgboost-alerts", procs.SCORERS["xgboost"], xgb.port, session_dir / "logs",
                                     env=scorer_env(mlflow_url), cwd=ROOT)
        mesh["xgboost"] = again
        return again.launch()

    mesh["restart_xgboost"] = restart_xgboost
    try:
        mesh["gateway"] = start_gateway(session_dir, redis_srv.port, scorer_urls({**scorers, "xgboost": xgb}),
                                        tag="alerts", HEALMESH_ALERTS_TOKEN=token)
        yield mesh
    finally:
        if "gateway" in mesh:
            mesh["gateway"].stop()
        mesh["xgboost"].stop()


def notification(status: str = "firing", starts: str = "2025-01-02T03:04:05.678Z", **labels: str) -> dict[str, Any]:
    alert = {"status": status, "labels": {"alertname": "HealmeshTestAlert", "severity": "info", **labels},
             "annotations": {"summary": "a test alert"}, "startsAt": starts,
             "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2025-01-02T03:09:05Z",
             "generatorURL": "http://127.0.0.1:1/graph", "fingerprint": "0123456789abcdef"}
    return {"version": "4", "groupKey": "{}:{alertname=\"HealmeshTestAlert\"}", "truncatedAlerts": 0,
            "status": status, "receiver": alerting.RECEIVER, "groupLabels": {}, "commonLabels": {},
            "commonAnnotations": {}, "externalURL": "http://127.0.0.1:1", "alerts": [alert]}


def test_the_webhook_checks_the_token_and_size_first_validates_and_records_each_alert_once(mesh, redis_srv):
    url = mesh["gateway"].url + alerting.WEBHOOK_PATH
    bearer = {"Authorization": f"Bearer {mesh['token']}"}
    stream = redis.Redis(port=redis_srv.port)

    def length() -> int:
        return stream.xlen(f"{PREFIX}:events")

    before = length()
    body = notification()
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123"}, {"Authorization": f"Bearer {LABELLER_TOKEN}"}):
        r = httpx.post(url, json=body, headers=headers, timeout=10)
        assert r.status_code == 401 and "alerts token" in r.json()["error"], r.text
    huge = b'{"version": "4", "x": "' + b"9" * 300_000 + b'"}'
    r = httpx.post(url, content=huge, headers={**bearer, "content-type": "application/json"}, timeout=10)
    assert r.status_code == 413, r.text
    bad = [({**body, "version": "3"}, "version"),
           ({**body, "alerts": []}, "alerts"),
           ({**body, "alerts": [{**body["alerts"][0], "labels": {"severity": "info"}}]}, "alerts.0.labels"),
           ({**body, "alerts": [{**body["alerts"][0], "status": "exploded"}]}, "alerts.0.status"),
           ({**body, "alerts": [{**body["alerts"][0], "startsAt": "yesterday"}]}, "alerts.0.startsAt"),
           ({**body, "alerts": [body["alerts"][0], {**body["alerts"][0], "fingerprint": "<script>"}]},
            "alerts.1.fingerprint")]
    for payload, field in bad:
        r = httpx.post(url, json=payload, headers=bearer, timeout=10)
        assert r.status_code == 422, (field, r.text)
        assert field in {d["field"] for d in r.json()["detail"]}, (field, r.text)
    assert length() == before  # nothing refused left a trace

    first = httpx.post(url, json=body, headers=bearer, timeout=10)
    assert first.status_code == 200 and first.json() == {"alerts": 1, "recorded": 1}, first.text
    # Alertmanager's repeat (and the admin token, an operator's test post): recorded once
    again = httpx.post(url, json=body, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert again.status_code == 200 and again.json() == {"alerts": 1, "recorded": 0}
    resolved = httpx.post(url, json=notification("resolved"), headers=bearer, timeout=10)
    assert resolved.json() == {"alerts": 1, "recorded": 1}
    refired = httpx.post(url, json=notification(starts="2025-01-02T04:00:00Z"), headers=bearer, timeout=10)
    assert refired.json() == {"alerts": 1, "recorded": 1}
    assert length() == before + 3
    kinds = [e["kind"] for e in alert_events(redis_srv.port, "HealmeshTestAlert")]
    assert kinds == ["alert_firing", "alert_resolved", "alert_firing"]  # newest first
    page = httpx.get(mesh["gateway"].url + "/ui/", timeout=10).text
    assert "HealmeshTestAlert (info): a test alert" in page


def breaker_samples(prometheus: procs.ServerProcess, upstream: str) -> str:
    """What Prometheus scraped of one breaker over the last 3 minutes (for a failure's message)."""
    try:
        r = httpx.get(prometheus.url + "/api/v1/query", timeout=5,
                      params={"query": f'healmesh_gateway_breaker_state{{upstream="{upstream}"}}[3m]'})
        return json.dumps([v[1] for s in r.json()["data"]["result"] for v in s["values"]])
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        return f"(prometheus not answering: {exc})"


def test_a_killed_scorer_fires_breaker_open_through_alertmanager_into_the_status_page(mesh, scorers, redis_srv):
    gateway, xgb = mesh["gateway"], mesh["xgboost"]
    settings = Settings(home=mesh["home"], alerts_token=None, gateway_port=gateway.port, xgb_port=xgb.port,
                        torch_port=scorers["pytorch"].port, fallback_port=scorers["fallback"].port,
                        prometheus_port=procs.free_port(), alertmanager_port=procs.free_port())
    servers = alerting.alerting_servers(settings)
    started: list[procs.ServerProcess] = []
    try:
        for server in servers:
            started.append(server.launch(timeout=60))
        alertmanager, prometheus = started

        def targets_up() -> bool:
            active = httpx.get(prometheus.url + "/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
            return len(active) == 4 and all(t["health"] == "up" for t in active)

        wait_for(targets_up, 60, "Prometheus to scrape the gateway and the three scorers")
        wait_for(lambda: httpx.get(prometheus.url + "/api/v1/alertmanagers", timeout=5)
                 .json()["data"]["activeAlertmanagers"], 30, "Prometheus to find its Alertmanager")
        assert not alert_events(redis_srv.port, "HealmeshBreakerOpen")

        assert procs.kill_tree(xgb.popen.pid)  # as a crash would: no goodbye
        xgb.popen.wait(timeout=10)

        def fired() -> list[dict[str, Any]]:
            return [e for e in alert_events(redis_srv.port, "HealmeshBreakerOpen", "alert_firing")
                    if e["data"]["labels"].get("upstream") == "xgboost_stable"]

        try:
            # the rule holds for 1 minute; then Alertmanager's 5 s group wait
            got = wait_for(fired, 150, "HealmeshBreakerOpen for xgboost_stable as a gateway event")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; breaker samples: {breaker_samples(prometheus, 'xgboost_stable')}; "
                                 f"alertmanager log:\n{alertmanager.log_tail(15)}") from None
        event = got[0]
        assert event["message"].startswith("HealmeshBreakerOpen (critical): the circuit breaker of xgboost_stable")
        assert event["data"]["severity"] == "critical" and event["data"]["status"] == "firing"
        assert len(got) == 1  # Alertmanager's repeats are not recorded again
        page = httpx.get(gateway.url + "/ui/", timeout=10).text
        assert "alert_firing" in page and "the circuit breaker of xgboost_stable" in page

        # back: traffic closes the breaker (half-open needs real answers), the rule resolves and
        # Alertmanager posts the resolution (send_resolved) within its group interval
        mesh["restart_xgboost"]()
        trickle = [{k: v for k, v in t.items() if k != "card_id"} for t in transactions(400, seed=31)]
        sent = 0

        def resolved() -> list[dict[str, Any]]:
            nonlocal sent
            run(gateway.url + "/api/v1/predict", trickle[sent % 400: sent % 400 + 20], concurrency=2)
            sent += 20
            return [e for e in alert_events(redis_srv.port, "HealmeshBreakerOpen", "alert_resolved")
                    if e["data"]["labels"].get("upstream") == "xgboost_stable"]

        try:
            [done] = wait_for(resolved, 120, "the resolution of HealmeshBreakerOpen as a gateway event", interval=2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; breaker samples: {breaker_samples(prometheus, 'xgboost_stable')}") from None
        assert done["data"]["starts_at"] == event["data"]["starts_at"] and done["data"]["ends_at"]
        assert done["message"] == event["message"]
    finally:
        for server in reversed(started):
            server.stop()
