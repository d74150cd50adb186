"""Tests healmesh.lifecycle.reports: the local mirror of the drift reports is best effort."""

from __future__ import annotations

from healmesh.control.drift_reports import ReportRecord
from healmesh.lifecycle.reports import write_mirror

ID = "20260101T120000Z_v3"


def _record() -> ReportRecord:
    return ReportRecord(id=ID, checked_at=1.0, model_version="3", window_size=600, decision="no_drift",
                        share_drifted=0.0, has_html=True, run_id="r", artifact_uri="mlflow-artifacts:/1/r/artifacts")


def test_the_mirror_holds_the_report_its_summary_and_an_index_of_the_listing(tmp_path):
    html = tmp_path / "rendered.html"
    html.write_text("<html>the report</html>")
    mirror = tmp_path / "drift_reports"
    summary = write_mirror(mirror, _record(), html, {"name": ID, "html": f"{ID}.html"}, [_record()])
    assert summary == (mirror / f"{ID}.json").resolve()
    assert (mirror / f"{ID}.html").read_text() == "<html>the report</html>"
    assert f'href="{ID}.html"' in (mirror / "index.html").read_text()


def test_a_mirror_that_cannot_be_written_fails_nothing(tmp_path):
    html = tmp_path / "rendered.html"
    html.write_text("<html>the report</html>")
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the mirror folder would be")
    assert write_mirror(blocked, _record(), html, {"name": ID}, [_record()]) is None
    assert write_mirror(blocked / "below", _record(), None, {"name": ID}, []) is None
