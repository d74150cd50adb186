"""Drift report ids: the one definition of what a report id looks like. Pure and light (the DAG
files use the pattern as a Param ``pattern``; the gateway checks a requested report with it).

An id (``20260101T120000Z_v3``) comes from outside the code, a DAG parameter, an asset event or
a URL of the status page, and names a record in the control state and an MLflow run: anything
else (``../../etc/passwd``) is refused before anything is looked up.
"""

from __future__ import annotations

import re
import time

from healmesh.errors import InvalidData

__all__ = ["REPORT_ID_PATTERN", "BadReportId", "report_name", "check_report_id"]

# UTC time of the check, then the champion's version ("none" before there is one)
REPORT_ID_PATTERN = r"^[0-9]{8}T[0-9]{6}Z_v[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
_REPORT_ID = re.compile(REPORT_ID_PATTERN)


class BadReportId(InvalidData):
    """A report id that does not match the pattern, or would leave the reports directory."""


def report_name(checked_at: float, model_version: str | None) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(checked_at))
    return check_report_id(f"{stamp}_v{model_version or 'none'}", "report name")


def check_report_id(value: object, parameter: str = "drift_check_id") -> str:
    if not isinstance(value, str) or not _REPORT_ID.fullmatch(value):
        raise BadReportId(f"{parameter} must be a drift report name matching {REPORT_ID_PATTERN} "
                          f"(such as 20260101T120000Z_v3), but was {value!r}")
    return value
