"""Alerting: the webhook body's validation and the events it becomes (pure), the rendered
Prometheus and Alertmanager configs (checked by promtool and amtool), the servers' command lines."""

from __future__ import annotations

import copy
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from healmesh import credentials
from healmesh.access import Access, Tokens, gateway_policy
from healmesh.gateway import alerts
from healmesh.ops import alerting, procs
from healmesh.settings import Settings

# the shape Alertmanager 0.25 posts (webhook version 4), for the breaker alert
FIRING: dict[str, Any] = {
    "receiver": "healmesh-gateway", "status": "firing",
    "alerts": [{
        "status": "firing",
        "labels": {"alertname": "HealmeshBreakerOpen", "severity": "critical", "upstream": "xgboost_stable"},
        "annotations": {"summary": "the circuit breaker of xgboost_stable has been open for over a minute"},
        "startsAt": "2025-06-01T10:00:03.21Z", "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://127.0.0.1:9090/graph?g0.expr=...", "fingerprint": "4f9b0e1c2d3a4b5c"}],
    "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {}, "externalURL": "http://127.0.0.1:9093",
    "version": "4", "groupKey": "{}:{}", "truncatedAlerts": 0,
}


def body(**alert_changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(FIRING)
    out["alerts"][0].update(alert_changes)
    return out


def field_of(exc: ValidationError) -> set[str]:
    return {".".join(str(x) for x in e["loc"]) for e in exc.errors()}


# --- the webhook body ------------------------------------------------------------------------------

def test_a_notification_becomes_one_event_per_alert_named_and_summarised():
    [event] = alerts.events(alerts.parse(FIRING))
    assert event.kind == "alert_firing"
    assert event.message == ("HealmeshBreakerOpen (critical): the circuit breaker of xgboost_stable has been "
                             "open for over a minute")
    assert event.data["labels"]["upstream"] == "xgboost_stable" and event.data["ends_at"] is None
    assert event.data["fingerprint"] == "4f9b0e1c2d3a4b5c" and event.data["severity"] == "critical"
    resolved = body(status="resolved", endsAt="2025-06-01T10:05:00Z")
    [done] = alerts.events(alerts.parse(resolved))
    assert done.kind == "alert_resolved" and done.data["ends_at"] == "2025-06-01T10:05:00+00:00"


def test_the_dedup_marker_is_fingerprint_status_and_start():
    def marker(b: dict[str, Any]) -> str:
        return alerts.events(alerts.parse(b))[0].marker

    first = marker(FIRING)
    # a repeat (other endsAt, other annotations, the same start written with another precision)
    assert marker(body(annotations={"summary": "changed"}, startsAt="2025-06-01T10:00:03.210Z")) == first
    assert marker(body(status="resolved")) != first
    assert marker(body(startsAt="2025-06-01T11:00:00Z")) != first
    assert marker(body(fingerprint="4f9b0e1c2d3a4b5d")) != first
    assert alerts.marker_key("hm", alerts.events(alerts.parse(FIRING))[0]) == f"hm:alerts:seen:{first}"


def test_the_message_falls_back_to_the_description_and_is_bounded():
    [event] = alerts.events(alerts.parse(body(annotations={"description": "d" * 2_000}, labels={"alertname": "X"})))
    assert event.message.startswith("X: ddd") and len(event.message) == alerts.MESSAGE_CHARS
    [bare] = alerts.events(alerts.parse(body(annotations={}, labels={"alertname": "X"})))
    assert bare.message == "X"


@pytest.mark.parametrize(("changes", "field"), [
    ({"version": "3"}, "version"),
    ({"status": "exploded"}, "status"),
    ({"alerts": []}, "alerts"),
    ({"alerts": "none"}, "alerts"),
])
def test_a_bad_notification_names_the_field(changes, field):
    with pytest.raises(ValidationError) as caught:
        alerts.parse({**FIRING, **changes})
    assert field in field_of(caught.value)


@pytest.mark.parametrize(("changes", "field"), [
    ({"status": "pending"}, "alerts.0.status"),
    ({"labels": {"severity": "critical"}}, "alerts.0.labels"),
    ({"labels": {"alertname": "not a name; <b>"}}, "alerts.0.labels"),
    ({"labels": {"alertname": "X", "n": 5}}, "alerts.0.labels.n"),
    ({"annotations": {"summary": "s" * 5_000}}, "alerts.0.annotations.summary"),
    # JSON may escape a lone surrogate: not text Redis (UTF-8) can store, refused here
    ({"annotations": {"summary": "a \ud800 b"}}, "alerts.0.annotations.summary"),
    ({"startsAt": "2025-06-01T10:00:03"}, "alerts.0.startsAt"),  # no time zone
    ({"startsAt": "soon"}, "alerts.0.startsAt"),
    ({"endsAt": 12}, "alerts.0.endsAt"),
    ({"fingerprint": "../../etc"}, "alerts.0.fingerprint"),
    ({"fingerprint": None}, "alerts.0.fingerprint"),
])
def test_a_bad_alert_names_its_field(changes, field):
    with pytest.raises(ValidationError) as caught:
        alerts.parse(body(**changes))
    assert field in field_of(caught.value), caught.value


def test_missing_alert_fields_are_named():
    for name in ("status", "labels", "startsAt", "fingerprint"):
        b = body()
        del b["alerts"][0][name]
        with pytest.raises(ValidationError) as caught:
            alerts.parse(b)
        assert f"alerts.0.{name}" in field_of(caught.value)


def test_the_route_answers_422_naming_the_field_before_anything_runs():
    """Through the gateway's FastAPI app: validation comes before the handler (which needs the
    served gateway and Redis, absent here), so a bad body records nothing."""
    import asyncio

    import httpx

    from healmesh.gateway.api import build_app

    async def post(payload: dict[str, Any], token: str | None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=build_app()), base_url="http://t") as client:
            return await client.post("/alerts", json=payload, headers=headers)

    r = asyncio.run(post(body(startsAt="yesterday"), "test-admin-token-0123"))  # tests/conftest.py's tokens
    assert r.status_code == 422 and "alerts.0.startsAt" in {d["field"] for d in r.json()["detail"]}, r.text
    assert asyncio.run(post(FIRING, None)).status_code == 401
    assert asyncio.run(post(FIRING, "test-labeller-token-0123")).status_code == 401


# --- who may post --------------------------------------------------------------------------------

def test_the_alerts_route_takes_the_alerts_or_the_admin_token_and_nothing_else():
    tokens = Tokens(admin="admin-token-123", labeller="label-token-123", alerts="alert-token-123")
    assert tokens.check(Access.ALERTS, "alert-token-123") is True
    assert tokens.check(Access.ALERTS, "admin-token-123") is True
    assert tokens.check(Access.ALERTS, "label-token-123") is False
    assert tokens.check(Access.ADMIN, "alert-token-123") is False
    assert tokens.check(Access.LABELLER, "alert-token-123") is False
    assert Tokens(admin=None).check(Access.ALERTS, "x") is None
    rule = gateway_policy(1_000_000).rule_for("/api/v1/alerts")
    assert rule.access is Access.ALERTS and rule.max_body >= 64 * 1_024


def test_the_alerts_token_file_is_private_and_holds_the_token_in_effect(tmp_path):
    generated = Settings(home=tmp_path / "a", alerts_token=None)
    path = credentials.alerts_token_file(generated)
    assert path.read_text() == credentials.alerts_token(generated)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and credentials.alerts_token_file(generated) == path
    given = Settings(home=tmp_path / "a", alerts_token="from-the-environment")
    assert credentials.alerts_token_file(given).read_text() == "from-the-environment"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert alerting.gateway_env(given) == {"HEALMESH_ALERTS_TOKEN": "from-the-environment"}


# --- the configs ---------------------------------------------------------------------------------

def local(tmp_path: Path, **ports: int) -> Settings:
    return Settings(home=tmp_path / "home", alerts_token=None, **ports)


def test_with_default_ports_the_prometheus_config_is_the_repositorys_file(tmp_path):
    rendered = alerting.prometheus_config(local(tmp_path))
    repo = yaml.safe_load(alerting.PROMETHEUS_YML.read_text())
    assert rendered["rule_files"] == [str(alerting.PROMETHEUS_DIR / "rules.yml")]
    assert {k: v for k, v in rendered.items() if k != "rule_files"} == {k: v for k, v in repo.items()
                                                                       if k != "rule_files"}
    assert rendered["global"] == {"scrape_interval": "5s", "evaluation_interval": "5s"}


def test_the_prometheus_config_follows_the_ports_in_settings(tmp_path):
    config = alerting.prometheus_config(local(tmp_path, gateway_port=18000, xgb_port=18001, torch_port=18002,
                                              fallback_port=18003, alertmanager_port=19093))
    targets = {s["labels"]["component"]: s["targets"] for job in config["scrape_configs"]
               for s in job["static_configs"]}
    assert targets == {"gateway": ["127.0.0.1:18000"], "xgboost_scorer": ["127.0.0.1:18001"],
                       "torch_scorer": ["127.0.0.1:18002"], "fallback_scorer": ["127.0.0.1:18003"]}
    assert config["alerting"]["alertmanagers"] == [{"static_configs": [{"targets": ["127.0.0.1:19093"]}]}]


def test_the_alertmanager_config_posts_every_alert_to_the_gateway_with_the_token_from_a_file(tmp_path):
    settings = local(tmp_path, gateway_port=18000)
    token_file = tmp_path / "token"
    config = alerting.alertmanager_config(settings, token_file)
    route = config["route"]
    assert route["receiver"] == alerting.RECEIVER and "routes" not in route  # every alert, one receiver
    assert route["group_wait"] == "5s" and route["group_interval"] == "10s"
    [hook] = config["receivers"][0]["webhook_configs"]
    assert hook["url"] == "http://127.0.0.1:18000/api/v1/alerts" and hook["send_resolved"] is True
    assert hook["http_config"] == {"authorization": {"type": "Bearer", "credentials_file": str(token_file)}}


def test_configs_are_written_private_and_hold_no_token(tmp_path):
    settings = local(tmp_path)
    files = alerting.write_configs(settings)
    token = credentials.alerts_token(settings)
    for path in (files.prometheus, files.alertmanager, files.token_file):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(files.directory.stat().st_mode) == 0o700
    assert token not in files.alertmanager.read_text() and token not in files.prometheus.read_text()
    files.prometheus.chmod(0o644)  # an older, wider file is replaced by a private one
    alerting.write_configs(settings)
    assert stat.S_IMODE(files.prometheus.stat().st_mode) == 0o600


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (make system-deps)")
    return path


def test_promtool_and_amtool_accept_the_rendered_configs(tmp_path):
    files = alerting.write_configs(local(tmp_path, gateway_port=18000, alertmanager_port=19093))
    for cmd in ([_tool("promtool"), "check", "config", str(files.prometheus)],
                [_tool("amtool"), "check-config", str(files.alertmanager)]):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


# --- the servers ---------------------------------------------------------------------------------

def test_prometheus_and_alertmanager_listen_on_127_0_0_1_only(tmp_path):
    if not (shutil.which("prometheus") and (shutil.which("prometheus-alertmanager") or shutil.which("alertmanager"))):
        pytest.skip("prometheus / alertmanager not installed (make system-deps)")
    settings = local(tmp_path, prometheus_port=19090, alertmanager_port=19093)
    manager, prometheus = alerting.alerting_servers(settings)
    assert prometheus.ready_path == manager.ready_path == "/-/ready"
    assert "--web.listen-address=127.0.0.1:19090" in prometheus.cmd and prometheus.port == 19090
    assert "--web.listen-address=127.0.0.1:19093" in manager.cmd and manager.port == 19093
    assert "--cluster.listen-address=" in manager.cmd  # no gossip listener on 0.0.0.0:9094
    assert f"--config.file={settings.home / 'alerting' / 'prometheus.yml'}" in prometheus.cmd
    assert all(not arg.startswith("--web.enable") for arg in prometheus.cmd)  # no admin/lifecycle API
    assert isinstance(prometheus, procs.ServerProcess) and prometheus.log_path.parent == settings.home / "logs"
