"""Drift report names: the one definition of what a report id looks like, and the only way from an
id to a file. Light (no heavy imports): the DAG files use the pattern as a Param ``pattern``.

An id (``20260101T120000Z_v3``) comes from outside the code, a DAG parameter or an asset event,
and becomes a path that retrain uploads to MLflow: anything else (``../../etc/passwd``) is refused
before a file is opened.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from healmesh.errors import InvalidData

# UTC time of the check, then the champion's version ("none" before there is one)
REPORT_ID_PATTERN = r"^[0-9]{8}T[0-9]{6}Z_v[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_REPORT_ID = re.compile(REPORT_ID_PATTERN)


class BadReportId(InvalidData):
    """A report id that does not match the pattern, or would leave the reports directory."""


def report_name(checked_at: float, model_version: str | None) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(checked_at))
    return check_report_id(f"{stamp}_v{model_version or 'none'}", "report name")


def check_report_id(value: str, parameter: str = "drift_check_id") -> str:
    if not isinstance(value, str) or not _REPORT_ID.fullmatch(value):
        raise BadReportId(f"{parameter} must be a drift report name matching {REPORT_ID_PATTERN} "
                          f"(such as 20260101T120000Z_v3), but was {value!r}")
    return value


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
