"""Tests healmesh.lifecycle.report_ids: a drift check id is a report name, never a path."""

import pytest

# --- issue 8, item 13: drift_check_id is a report name, never a path ------------------------

@pytest.mark.parametrize("bad", ["../../etc/passwd", "/etc/passwd", "20260101T120000Z_v3/../../x",
                                 "20260101T120000Z_v..", "x", "", "20260101T120000Z_v3\n"])
def test_a_drift_check_id_must_be_a_report_name(bad):
    from healmesh.lifecycle.report_ids import BadReportId, check_report_id

    with pytest.raises(BadReportId, match="drift_check_id must be a drift report name"):
        check_report_id(bad)


def test_report_names_match_the_pattern_and_resolve_inside_the_directory(tmp_path):
    from healmesh.lifecycle.report_ids import BadReportId, report_files, report_name

    name = report_name(1_780_000_000.0, "12")
    assert name == "20260528T202640Z_v12" and report_name(0.0, None).endswith("_vnone")
    files = report_files(tmp_path, name)
    assert files["html"] == (tmp_path / f"{name}.html").resolve()
    (tmp_path / "20260101T000000Z_v1.html").symlink_to("/etc/passwd")  # a link out of the directory
    with pytest.raises(BadReportId, match="resolves outside"):
        report_files(tmp_path, "20260101T000000Z_v1")
