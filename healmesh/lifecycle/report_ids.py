"""Drift report names (defined in ``healmesh.control.report_ids``, which the gateway shares) and
the only way from an id to a file of the local mirror (``drift_reports/``)."""

from __future__ import annotations

from pathlib import Path

from healmesh.control.report_ids import REPORT_ID_PATTERN, BadReportId, check_report_id, report_name

__all__ = ["REPORT_ID_PATTERN", "BadReportId", "report_name", "check_report_id", "report_files"]


def report_files(directory: Path, report_id: str, parameter: str = "drift_check_id") -> dict[str, Path]:
    """The report's HTML and JSON paths, checked to lie inside ``directory``."""
    check_report_id(report_id, parameter)
    root = directory.resolve()
    out = {}
    for kind, suffix in (("html", ".html"), ("json", ".json")):
        path = (root / f"{report_id}{suffix}").resolve()
        if path.parent != root:  # defence in depth: the pattern already rules out separators
            raise BadReportId(f"{parameter} {report_id!r} resolves outside {root}")
        out[kind] = path
    return out
