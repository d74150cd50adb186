"""The drift reports as the control state lists them: one small record per report, keyed by its
id, saying what the check decided and where its artifacts are (an MLflow run of the drift
experiment, served by the tracking server's artifact proxy); and the index page rendered from
those records. Pure: no client, no file.

The reports themselves (``report.html``, ``summary.json``) live in MLflow's artifact store, so the
gateway that serves them need not share a disk with the Airflow worker that wrote them.
"""

from __future__ import annotations

import html
import json
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlparse

from healmesh.control.report_ids import check_report_id

__all__ = ["REPORT_HTML", "SUMMARY_JSON", "KEEP_LISTED", "ReportRecord", "encode_record", "parse_record",
           "proxied_path", "newest_first", "index_page", "records_from_hash"]

REPORT_HTML = "report.html"
SUMMARY_JSON = "summary.json"
# Records the control state keeps (newest first): at one check every 15 minutes, three weeks. The
# older reports stay in MLflow (the system of record); only the listing forgets them.
KEEP_LISTED = 2_000
_SEGMENT = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class ReportRecord:
    id: str
    checked_at: float
    model_version: str | None
    window_size: int
    decision: str
    share_drifted: float
    headline: str = ""
    drifted_features: tuple[str, ...] = ()
    top_features: tuple[tuple[str, float], ...] = ()
    has_html: bool = False  # no HTML for a window too small for a decision
    run_id: str | None = None  # the MLflow run holding the artifacts
    artifact_uri: str | None = None  # that run's artifact root (mlflow-artifacts:/<exp>/<run>/artifacts)

    def __post_init__(self) -> None:
        check_report_id(self.id, "report id")


def encode_record(record: ReportRecord) -> str:
    return json.dumps(asdict(record))


def parse_record(raw: str | bytes) -> ReportRecord | None:
    """A record read back from Redis; None for one that is not (a broken entry lists nothing)."""
    try:
        d: dict[str, Any] = json.loads(raw)
        return ReportRecord(
            id=str(d["id"]), checked_at=float(d["checked_at"]),
            model_version=None if d.get("model_version") is None else str(d["model_version"]),
            window_size=int(d["window_size"]), decision=str(d["decision"]), share_drifted=float(d["share_drifted"]),
            headline=str(d.get("headline", "")), drifted_features=tuple(str(f) for f in d.get("drifted_features", ())),
            top_features=tuple((str(f), float(p)) for f, p in d.get("top_features", ())),
            has_html=bool(d.get("has_html")), run_id=d.get("run_id"), artifact_uri=d.get("artifact_uri"))
    except (ValueError, TypeError, KeyError):
        return None


def proxied_path(artifact_uri: str | None, name: str) -> str | None:
    """The path of artifact ``name`` under the tracking server's artifact proxy
    (``GET /api/2.0/mlflow-artifacts/artifacts/<path>``), or None when the run's artifacts are not
    behind the proxy (an experiment made by a server without it) or the URI is not one we wrote."""
    if not artifact_uri:
        return None
    parsed = urlparse(artifact_uri)
    if parsed.scheme != "mlflow-artifacts" or parsed.query or parsed.fragment:
        return None
    segments = [s for s in parsed.path.split("/") if s] + [name]
    if not all(_SEGMENT.fullmatch(s) and s not in (".", "..") for s in segments):
        return None
    return "/".join(segments)


def newest_first(records: Iterable[ReportRecord]) -> list[ReportRecord]:
    return sorted(records, key=lambda r: (r.checked_at, r.id), reverse=True)


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def index_page(records: Iterable[ReportRecord], listed_in: str = "the control state") -> str:
    """Every listed report, newest first, each linked as ``<id>.html`` (relative: the same page
    works at the gateway's /ui/reports/index.html and in the local mirror folder)."""
    rows = []
    listed = newest_first(records)
    for r in listed:
        top = ", ".join(f"{html.escape(f)} ({psi:.2f})" for f, psi in r.top_features[:3])
        drifted = ", ".join(html.escape(f) for f in r.drifted_features) or "none"
        link = (f'<a href="{html.escape(r.id)}.html">report</a>' if r.has_html
                else "no report (window too small)")
        decision = html.escape(r.decision)
        version = html.escape(str(r.model_version))
        rows.append(f"<tr class='{decision}' id='{html.escape(r.id)}'><td>{_when(r.checked_at)}</td><td>v{version}</td>"
                    f"<td>{r.window_size}</td><td><b>{decision}</b></td><td>{r.share_drifted:.0%}</td>"
                    f"<td>{drifted}</td><td>{top}</td><td>{html.escape(r.headline)}</td><td>{link}</td></tr>")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>healmesh drift reports</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
table {{ border-collapse: collapse; width: 100%; }}
th, td {{ border-bottom: 1px solid #ddd; padding: .4rem .6rem; text-align: left; font-size: 14px; }}
tr.drift td {{ background: #fde8e8; }} tr.insufficient_data td {{ color: #888; }}
tr.drift_reported td, tr.anomalous_traffic td {{ background: #fff6dd; }}
</style></head>
<body><h1>healmesh drift reports</h1>
<p>{len(rows)} checks, newest first, as listed in {html.escape(listed_in)}; each report is an MLflow run
of the drift experiment. Reference: the champion's training sample; current: the recent window of
live traffic from the feature log.</p>
<table><thead><tr><th>checked</th><th>champion</th><th>window</th><th>decision</th><th>drifted share</th>
<th>drifted features</th><th>most drifted (PSI)</th><th>why</th><th>report</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody></table></body></html>
"""


def records_from_hash(raw: Mapping[Any, Any]) -> list[ReportRecord]:
    """The records of the reports hash (HGETALL), broken entries left out, newest first."""
    return newest_first(r for r in (parse_record(v) for v in (raw or {}).values()) if r is not None)
