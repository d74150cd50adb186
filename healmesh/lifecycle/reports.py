"""Drift reports on disk: Evidently's HTML per check, a JSON summary beside it, and an index.

``drift_reports/<UTC time>_v<model version>.html`` (self-contained, renders offline; healmesh's
decision, its reasons and the ranked features on top, Evidently's report under them),
``<same name>.json`` (the healmesh decision and statistics), and ``index.html`` listing every
report, newest first, with window size, share of drifted features, the most drifted
features and a link.
"""

from __future__ import annotations

import html
import json
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from healmesh import schema
from healmesh.lifecycle.report_ids import report_name
from healmesh.policies.drift import DriftThresholds
from healmesh.policies.drift_alarm import DriftResult
from healmesh.policies.drift_decision import DriftDecision

__all__ = ["report_name", "evidently_html", "decision_banner", "write_report", "summaries", "write_index"]


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

        definition = DataDefinition(numerical_columns=[f.name for f in schema.NUMERIC],
                                    categorical_columns=[f.name for f in schema.CATEGORICAL])
        cols = list(schema.FEATURE_NAMES)
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


def write_report(directory: Path, result: DriftResult, reference: pd.DataFrame, current: pd.DataFrame, *,
                 checked_at: float, model_version: str | None, thresholds: DriftThresholds,
                 extra: dict[str, Any] | None = None) -> Path:
    """Write the HTML (when there is a decision to show) and the JSON summary; refresh the index."""
    directory.mkdir(parents=True, exist_ok=True)
    name = report_name(checked_at, model_version)
    html_path = directory / f"{name}.html"
    if result.decision is not DriftDecision.INSUFFICIENT_DATA:
        evidently_html(reference, current, html_path, thresholds, decision_banner(result))
    summary = {"name": name, "checked_at": checked_at, "model_version": model_version,
               "html": html_path.name if html_path.exists() else None, **result.to_dict(),
               "top_features": result.top(5), **(extra or {})}
    (directory / f"{name}.json").write_text(json.dumps(summary, indent=2, default=str))
    write_index(directory)
    return directory / f"{name}.json"


def summaries(directory: Path) -> list[dict[str, Any]]:
    out = []
    for p in directory.glob("*.json"):
        try:
            out.append(json.loads(p.read_text()))
        except (OSError, ValueError):
            continue
    return sorted(out, key=lambda s: s.get("checked_at", 0), reverse=True)


def write_index(directory: Path) -> Path:
    rows = []
    for s in summaries(directory):
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(s["checked_at"]))
        top = ", ".join(f"{html.escape(f)} ({psi:.2f})" for f, psi in s.get("top_features", [])[:3])
        drifted = ", ".join(html.escape(f) for f in s.get("drifted_features", [])) or "none"
        link = f'<a href="{html.escape(s["html"])}">report</a>' if s.get("html") else "no report (window too small)"
        decision = html.escape(s["decision"])
        rows.append(f"<tr class='{decision}'><td>{when}</td><td>v{html.escape(str(s.get('model_version')))}</td>"
                    f"<td>{s['window_size']}</td><td><b>{decision}</b></td><td>{s['share_drifted']:.0%}</td>"
                    f"<td>{drifted}</td><td>{top}</td><td>{html.escape(s.get('headline', ''))}</td>"
                    f"<td>{link}</td></tr>")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>healmesh drift reports</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
table {{ border-collapse: collapse; width: 100%; }}
th, td {{ border-bottom: 1px solid #ddd; padding: .4rem .6rem; text-align: left; font-size: 14px; }}
tr.drift td {{ background: #fde8e8; }} tr.insufficient_data td {{ color: #888; }}
tr.drift_reported td, tr.anomalous_traffic td {{ background: #fff6dd; }}
</style></head>
<body><h1>healmesh drift reports</h1>
<p>{len(rows)} checks, newest first. Reference: the champion's training sample; current: the recent
window of live traffic from the feature log.</p>
<table><thead><tr><th>checked</th><th>champion</th><th>window</th><th>decision</th><th>drifted share</th>
<th>drifted features</th><th>most drifted (PSI)</th><th>why</th><th>report</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody></table></body></html>
"""
    path = directory / "index.html"
    tmp = directory / ".index.html.tmp"
    tmp.write_text(page)
    os.replace(tmp, path)
    return path
