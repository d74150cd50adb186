"""``GET /ui/reports/{name}`` serves drift reports from the reports directory and nothing else.

Through the route (as a browser reaches it): a name the guard refuses is 404 even where such a
file exists in the directory, and a report name that is a link out of the directory is 404."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from healmesh.gateway.status_page import status_app
from healmesh.settings import get_settings

REPORT = "20260101T000000Z_v1.html"


@pytest.fixture
def reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[TestClient, Path]]:
    directory = tmp_path / "reports"
    directory.mkdir()
    (directory / REPORT).write_text("<html>the report</html>")
    (directory / "index.html").write_text("<html>the index</html>")
    (directory / "notes.txt").write_text("not a report")
    (directory / ".env").write_text("SECRET=1")
    (tmp_path / "secret.html").write_text("outside the reports directory")
    monkeypatch.setenv("HEALMESH_DRIFT_REPORTS_DIR", str(directory))
    get_settings.cache_clear()
    with TestClient(status_app()) as client:
        yield client, directory
    get_settings.cache_clear()


def test_a_report_and_the_index_are_served(reports):
    client, _ = reports
    assert client.get(f"/reports/{REPORT}").text == "<html>the report</html>"
    assert client.get("/reports/index.html").text == "<html>the index</html>"


@pytest.mark.parametrize("name", ["notes.txt", ".env", "%2Eenv", "%2E%2E"])
def test_a_file_that_is_not_a_report_is_not_served_even_when_it_exists(reports, name):
    client, _ = reports
    r = client.get(f"/reports/{name}")
    assert r.status_code == 404 and r.json() == {"detail": "no such report"}  # the guard's answer


@pytest.mark.parametrize("path", ["/reports/..%2Fsecret.html", "/reports/%2E%2E%2Fsecret.html",
                                  "/reports/..%5Csecret.html"])
def test_an_encoded_path_out_of_the_directory_is_refused(reports, path):
    client, _ = reports
    r = client.get(path)
    assert r.status_code == 404 and "outside" not in r.text


def test_a_report_name_linking_out_of_the_directory_is_refused(reports, tmp_path):
    client, directory = reports
    (directory / "20260102T000000Z_v2.html").symlink_to(tmp_path / "secret.html")
    r = client.get("/reports/20260102T000000Z_v2.html")
    assert r.status_code == 404 and "outside" not in r.text


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
