"""Drift reports: Evidently's HTML per check (self-contained, renders offline; healmesh's decision,
its reasons and the ranked features on top, Evidently's report under them) and a JSON summary
(the healmesh decision and statistics).

They are stored in MLflow (``report_store``) and listed in the control state (a
``ReportRecord`` per report); ``drift_reports/`` holds a browsable local mirror
(``<UTC time>_v<model version>.html``, ``.json``, and ``index.html`` from the listing), written
best-effort and never read back.
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from healmesh import schema
from healmesh.control.drift_reports import ReportRecord, index_page
from healmesh.lifecycle.report_ids import report_files, report_name
from healmesh.policies.drift import DriftThresholds
from healmesh.policies.drift_alarm import DriftResult
from healmesh.policies.drift_decision import DriftDecision

__all__ = ["report_name", "evidently_html", "decision_banner", "render_html", "summary_of", "record_of",
           "write_mirror", "write_index"]

log = logging.getLogger(__name__)


def evidently_html(reference: pd.DataFrame, current: pd.DataFrame, path: Path, t: DriftThresholds,
                   banner: str = "") -> None:
    """Evidently's data-drift report of the same window, saved as self-contained HTML, with ``banner``
    (healmesh's decision) at the top of the page. The preset runs with our thresholds: a column
    drifts at PSI >= ``min_psi`` and the dataset at one drifted column, so its headline says what
    the statistics say; the banner is the decision, which also weighs significance over all the
    features, the model's importance and anomalous traffic (Evidently's default, half the columns
    by its own tests, once said "not detected" above a check that retrained)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from evidently import DataDefinition, Dataset, Report
        from evidently.presets import DataDriftPreset

        definition = DataDefinition(numerical_columns=[f.name for f in schema.active().numeric],
                                    categorical_columns=[f.name for f in schema.active().categorical])
        cols = list(schema.active().feature_names)
        preset = DataDriftPreset(method="psi", threshold=t.min_psi, drift_share=1.0 / len(cols))
        snapshot = Report([preset]).run(
            Dataset.from_pandas(current[cols].reset_index(drop=True), data_definition=definition),
            Dataset.from_pandas(reference[cols].reset_index(drop=True), data_definition=definition))
        tmp = path.with_suffix(".tmp.html")
        snapshot.save_html(str(tmp))
        if banner:
            page = tmp.read_text()
            body = re.search(r"<body[^>]*>", page)
            at = body.end() if body else 0
            tmp.write_text(page[:at] + banner + page[at:])
        os.replace(tmp, path)


def decision_banner(result: DriftResult) -> str:
    """healmesh's decision, its reasons and the features ranked by drift x importance, as HTML."""
    colour = {DriftDecision.DRIFT: "#fde8e8", DriftDecision.NO_DRIFT: "#e8f6e8"}.get(result.decision, "#fff6dd")
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in result.reasons)
    rows = "".join(
        f"<tr><td>{html.escape(f.feature)}</td><td>{'yes' if f.drifted else 'no'}</td><td>{f.psi:.3f}</td>"
        f"<td>{f.effect:.3f}</td><td>{f.q_value:.2g}</td>"
        f"<td>{'-' if f.importance is None else f'{f.importance:.1%}'}</td><td>{f.score:.3f}</td></tr>"
        for f in result.alarm.features[:8])
    table = ("<table style='border-collapse:collapse;margin-top:.5rem'><tr><th>feature</th><th>drifted</th>"
             "<th>PSI</th><th>KS / JS</th><th>BH-adjusted p</th><th>importance</th><th>PSI x importance</th></tr>"
             f"{rows}</table>") if rows else ""
    return (f"<section id='healmesh-decision' style='font-family:system-ui,sans-serif;background:{colour};"
            f"padding:1rem 1.5rem;margin:0 0 1rem 0;border-bottom:1px solid #ccc'>"
            f"<h1 style='margin:0 0 .5rem 0;font-size:22px'>healmesh decision: "
            f"<span class='decision'>{html.escape(result.decision.value)}</span></h1>"
            f"<p style='font-size:16px;margin:.25rem 0'>{html.escape(result.headline)}</p>"
            f"<ul style='font-size:14px'>{reasons}</ul>{table}"
            "<p style='font-size:12px;color:#555'>Below: Evidently's data-drift report of the same window "
            "(a column drifts at PSI >= the same floor); the decision above is the one the lifecycle acts on.</p>"
            "</section>")


def render_html(directory: Path, name: str, result: DriftResult, reference: pd.DataFrame, current: pd.DataFrame,
                thresholds: DriftThresholds) -> Path | None:
    """The report's HTML as ``directory/<name>.html``; None when there is no decision to show."""
    if result.decision is DriftDecision.INSUFFICIENT_DATA:
        return None
    path = directory / f"{name}.html"
    evidently_html(reference, current, path, thresholds, decision_banner(result))
    return path


def summary_of(name: str, result: DriftResult, *, checked_at: float, model_version: str | None, has_html: bool,
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON summary: healmesh's decision and statistics (``html``: the report's file name, or None)."""
    return {"name": name, "checked_at": checked_at, "model_version": model_version,
            "html": f"{name}.html" if has_html else None, **result.to_dict(),
            "top_features": result.top(5), **(extra or {})}


def record_of(summary: dict[str, Any], run_id: str, artifact_uri: str) -> ReportRecord:
    """The control state's listing of a report stored in MLflow."""
    return ReportRecord(
        id=summary["name"], checked_at=float(summary["checked_at"]),
        model_version=None if summary["model_version"] is None else str(summary["model_version"]),
        window_size=int(summary["window_size"]), decision=str(summary["decision"]),
        share_drifted=float(summary["share_drifted"]), headline=str(summary.get("headline", "")),
        drifted_features=tuple(summary.get("drifted_features", ())),
        top_features=tuple((str(f), float(p)) for f, p in summary.get("top_features", ())),
        has_html=summary.get("html") is not None, run_id=run_id, artifact_uri=artifact_uri)


def write_mirror(directory: Path, record: ReportRecord, html_path: Path | None, summary: dict[str, Any],
                 listed: list[ReportRecord]) -> Path | None:
    """The local, browsable mirror: ``<id>.html``, ``<id>.json`` and ``index.html`` (rendered from
    the control state's listing, as the gateway's is). Best effort: the reports live in MLflow,
    and a mirror that cannot be written (a read-only or full disk) never fails the check. Nothing
    reads it back. Returns the summary's path, or None when it was not written."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        files = report_files(directory, record.id, "report id")
        if html_path is not None:
            tmp = directory / f".{record.id}.html.tmp"
            shutil.copyfile(html_path, tmp)
            os.replace(tmp, files["html"])
        files["json"].write_text(json.dumps(summary, indent=2, default=str))
        write_index(directory, listed)
        return files["json"]
    except Exception as exc:  # noqa: BLE001 - a mirror, never a reason to fail
        log.warning("drift report %s: the local mirror in %s was not written: %s", record.id, directory, exc)
        return None


def write_index(directory: Path, listed: list[ReportRecord]) -> Path:
    path = directory / "index.html"
    tmp = directory / ".index.html.tmp"
    tmp.write_text(index_page(listed))
    os.replace(tmp, path)
    return path
