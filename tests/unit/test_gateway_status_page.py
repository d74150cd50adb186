"""``GET /ui/reports/{name}``: a name that is not ``index.html`` or ``<report id>.html`` is 404
before anything is looked up (even where such a file lies in the local mirror folder, which the
gateway never reads), and a report is fetched from the MLflow artifact proxy within a size bound.
The routes with the control state and a real MLflow server: tests/integration/test_drift_reports_mlflow.py."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from fastapi import HTTPException
from fastapi.testclient import TestClient

from healmesh.gateway.status_page import ARTIFACTS_API, fetch_artifact, report_id_of, status_app
from healmesh.settings import get_settings

REPORT = "20260101T000000Z_v1.html"


@pytest.fixture
def reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[TestClient, Path]]:
    directory = tmp_path / "reports"
    directory.mkdir()
    (directory / REPORT).write_text("<html>the report</html>")
    (directory / "notes.txt").write_text("not a report")
    (directory / ".env").write_text("SECRET=1")
    (tmp_path / "secret.html").write_text("outside the reports directory")
    monkeypatch.setenv("HEALMESH_DRIFT_REPORTS_DIR", str(directory))
    get_settings.cache_clear()
    with TestClient(status_app(), raise_server_exceptions=False) as client:
        yield client, directory
    get_settings.cache_clear()


@pytest.mark.parametrize("name", ["notes.txt", ".env", "%2Eenv", "%2E%2E", "20260101T000000Z_v1.json",
                                  "20260101T000000Z_v1", "x.html", "20260101T000000Z_v..html"])
def test_a_name_that_is_not_a_report_is_not_served_even_when_it_exists(reports, name):
    client, _ = reports
    r = client.get(f"/reports/{name}")
    assert r.status_code == 404 and r.json() == {"detail": "no such report"}  # the guard's answer


@pytest.mark.parametrize("path", ["/reports/..%2Fsecret.html", "/reports/%2E%2E%2Fsecret.html",
                                  "/reports/..%5Csecret.html"])
def test_an_encoded_path_out_of_the_directory_is_refused(reports, path):
    client, _ = reports
    r = client.get(path)
    assert r.status_code == 404 and "outside" not in r.text


def test_a_report_id_is_the_name_less_html():
    assert report_id_of(REPORT) == "20260101T000000Z_v1"
    with pytest.raises(HTTPException) as refused:
        report_id_of("index.json")
    assert refused.value.status_code == 404


class _Artifacts(BaseHTTPRequestHandler):
    """A stand-in for the artifact proxy's download route (a real HTTP server on 127.0.0.1)."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        name = self.path.removeprefix(ARTIFACTS_API)
        code, body = {"ok.html": (200, b"<html>ok</html>"), "big.html": (200, b"x" * 5_000),
                      "fail.html": (500, b"boom")}.get(name, (404, b"{}"))
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def artifacts_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Artifacts)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _status(coro) -> int:
    with pytest.raises(HTTPException) as failed:
        asyncio.run(coro)
    return failed.value.status_code


def test_an_artifact_is_fetched_within_its_bound_and_failures_are_told_apart(artifacts_server):
    assert asyncio.run(fetch_artifact(artifacts_server, "ok.html")) == b"<html>ok</html>"
    assert _status(fetch_artifact(artifacts_server, "big.html", limit=1_000)) == 502
    assert _status(fetch_artifact(artifacts_server, "missing.html")) == 404
    assert _status(fetch_artifact(artifacts_server, "fail.html")) == 502
    assert _status(fetch_artifact("http://127.0.0.1:9", "ok.html")) == 502  # nobody listening
    assert _status(fetch_artifact("sqlite:////tmp/mlflow.db", "ok.html")) == 503  # no server to ask


def test_the_rollouts_shadow_stage_is_shown_with_the_mirror_and_its_agreement():
    from healmesh.control.state import ControlState, Rollout, RolloutStatus, apply_change
    from healmesh.gateway.status_page import render

    stages = (10, 50, 100)
    control = apply_change(ControlState(), "rollout", Rollout(0, "4", RolloutStatus.SHADOW), stages)
    state = {"control": control.describe(), "effective_weights": control.weights.as_dict(), "breakers": {},
             "feature_log": {"written": 0, "buffered": 0, "dropped": 0, "redis_up": True},
             "shadow": {"in_flight": 2, "dropped": 0, "agreement": 0.987}, "worker": {"instance_id": "w1"}}
    page = render(state, {}, [], [])
    assert '<td id="rollout-status">shadow</td>' in page
    assert "shadow: 0 % of users, live traffic mirrored to the canary" in page
    assert "mirrored to xgboost_canary; decisions agree with the primary's: 98.7%" in page
    # the first stage ends the mirror in the same change
    running = apply_change(control, "rollout", Rollout(10, "4", RolloutStatus.RUNNING), stages)
    page = render({**state, "control": running.describe()}, {}, [], [])
    assert '<td id="rollout-stage">10%</td>' in page and '<td id="shadow">off</td>' in page


def test_the_workers_concurrency_limits_are_shown_with_what_they_shed():
    from healmesh.control.state import ControlState
    from healmesh.gateway.status_page import render
    from healmesh.policies.concurrency import ConcurrencyLimit, Kind, LimiterConfig

    limit = ConcurrencyLimit(LimiterConfig(initial_limit=2, min_limit=1, max_limit=2))
    for kind in (Kind.PRIMARY, Kind.PRIMARY, Kind.PRIMARY, Kind.SHADOW):
        limit.try_acquire(kind)
    control = ControlState()
    state = {"control": control.describe(), "effective_weights": control.weights.as_dict(), "breakers": {},
             "feature_log": {"written": 0, "buffered": 0, "dropped": 0, "redis_up": True},
             "shadow": {}, "worker": {"instance_id": "w1"}, "limits": {"admission": limit.describe()}}
    page = render(state, {}, [], [])
    assert ("<td>admission</td><td class='num' data-limit='admission'>2</td><td class='num'>2</td>"
            "<td class='num'>1</td><td class='num'>1</td>") in page
