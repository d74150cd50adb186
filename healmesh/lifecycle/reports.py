"""Drift reports on disk: Evidently's HTML per check, a JSON summary beside it, and an index.

``drift_reports/<UTC time>_v<model version>.html`` (self-contained, renders offline),
``<same name>.json`` (the healmesh decision and statistics), and ``index.html`` listing every
report, newest first, with window size, share of drifted features, the most drifted
features and a link.
"""

from __future__ import annotations

import html
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from healmesh import schema
from healmesh.lifecycle.report_ids import report_name
from healmesh.policies.drift import DriftResult
from healmesh.policies.drift_decision import DriftDecision

__all__ = ["report_name", "evidently_html", "write_report", "summaries", "write_index"]


def evidently_html(reference: pd.DataFrame, current: pd.DataFrame, path: Path) -> None:
    """Evidently's data-drift report of the same window, saved as self-contained HTML."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from evidently import DataDefinition, Dataset, Report
        from evidently.presets import DataDriftPreset

        definition = DataDefinition(numerical_columns=[f.name for f in schema.NUMERIC],
                                    categorical_columns=[f.name for f in schema.CATEGORICAL])
        cols = list(schema.FEATURE_NAMES)
        snapshot = Report([DataDriftPreset()]).run(
            Dataset.from_pandas(current[cols].reset_index(drop=True), data_definition=definition),
            Dataset.from_pandas(reference[cols].reset_index(drop=True), data_definition=definition))
        tmp = path.with_suffix(".tmp.html")
        snapshot.save_html(str(tmp))
        os.replace(tmp, path)


def write_report(directory: Path, result: DriftResult, reference: pd.DataFrame, current: pd.DataFrame, *,
                 checked_at: float, model_version: str | None, extra: dict[str, Any] | None = None) -> Path:
    """Write the HTML (when there is a decision to show) and the JSON summary; refresh the index."""
    directory.mkdir(parents=True, exist_ok=True)
    name = report_name(checked_at, model_version)
    html_path = directory / f"{name}.html"
    if result.decision is not DriftDecision.INSUFFICIENT_DATA:
        evidently_html(reference, current, html_path)
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
                    f"<td>{drifted}</td><td>{top}</td><td>{link}</td></tr>")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>healmesh drift reports</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
table {{ border-collapse: collapse; width: 100%; }}
th, td {{ border-bottom: 1px solid #ddd; padding: .4rem .6rem; text-align: left; font-size: 14px; }}
tr.drift td {{ background: #fde8e8; }} tr.insufficient_data td {{ color: #888; }}
</style></head>
<body><h1>healmesh drift reports</h1>
<p>{len(rows)} checks, newest first. Reference: the champion's training sample; current: the recent
window of live traffic from the feature log.</p>
<table><thead><tr><th>checked</th><th>champion</th><th>window</th><th>decision</th><th>drifted share</th>
<th>drifted features</th><th>most drifted (PSI)</th><th>report</th></tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody></table></body></html>
"""
    path = directory / "index.html"
    tmp = directory / ".index.html.tmp"
    tmp.write_text(page)
    os.replace(tmp, path)
    return path
