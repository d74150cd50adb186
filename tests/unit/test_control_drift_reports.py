"""Tests healmesh.control.drift_reports: the control state's record of a drift report, where its
artifacts are behind the MLflow artifact proxy, and the index page rendered from the records."""

from __future__ import annotations

import pytest

from healmesh.control.drift_reports import (
    REPORT_HTML,
    ReportRecord,
    encode_record,
    index_page,
    parse_record,
    proxied_path,
    records_from_hash,
)
from healmesh.control.report_ids import BadReportId

URI = "mlflow-artifacts:/7/0123abcd/artifacts"


def record(report_id: str = "20260101T120000Z_v3", checked_at: float = 1_767_268_800.0, **kw) -> ReportRecord:
    base = dict(model_version="3", window_size=5_000, decision="drift", share_drifted=0.25,
                headline="amount moved <a lot>", drifted_features=("amount",), top_features=(("amount", 0.31),),
                has_html=True, run_id="0123abcd", artifact_uri=URI)
    return ReportRecord(id=report_id, checked_at=checked_at, **{**base, **kw})


def test_a_record_reads_back_as_written_and_a_broken_one_as_none():
    r = record()
    assert parse_record(encode_record(r)) == r
    assert parse_record(encode_record(r).encode()) == r
    assert parse_record("{not json") is None and parse_record('{"id": "x"}') is None
    # an id that is not a report name is no record (it would become a link)
    assert parse_record(encode_record(r).replace("20260101T120000Z_v3", "../../x")) is None
    with pytest.raises(BadReportId):
        record("../etc/passwd")


def test_the_listing_is_newest_first_and_skips_broken_entries():
    older, newer = record("20260101T120000Z_v3", 1.0), record("20260102T120000Z_v3", 2.0)
    listed = records_from_hash({b"a": encode_record(older), b"b": encode_record(newer), b"c": b"garbage"})
    assert [r.id for r in listed] == [newer.id, older.id]


@pytest.mark.parametrize(("uri", "path"), [
    (URI, f"7/0123abcd/artifacts/{REPORT_HTML}"),
    ("mlflow-artifacts://mlflow.example:5000/7/0123abcd/artifacts", f"7/0123abcd/artifacts/{REPORT_HTML}"),
    ("file:///srv/mlflow/artifacts/7/0123abcd/artifacts", None),  # not behind the proxy
    ("s3://bucket/7/0123abcd/artifacts", None),
    ("mlflow-artifacts:/7/../../etc/artifacts", None),
    ("mlflow-artifacts:/7/x?y=1", None),
    (None, None), ("", None),
])
def test_the_proxied_path_is_the_run_artifact_path_under_the_proxy_or_none(uri, path):
    assert proxied_path(uri, REPORT_HTML) == path


def test_the_index_links_each_report_by_id_and_escapes_what_it_shows():
    page = index_page([record("20260101T120000Z_v3", 1.0),
                       record("20260102T120000Z_v3", 2.0, has_html=False, decision="insufficient_data")])
    assert '<a href="20260101T120000Z_v3.html">report</a>' in page
    assert "20260102T120000Z_v3.html" not in page and "no report (window too small)" in page
    assert "amount moved &lt;a lot&gt;" in page and "<a lot>" not in page
    assert page.index("insufficient_data") < page.index("20260101T120000Z_v3.html")  # newest first
    assert "2 checks" in page and "id='20260102T120000Z_v3'" in page  # each row is named by its report id
