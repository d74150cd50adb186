"""Drift reports in MLflow: one run per drift check in the drift experiment
(``<experiment_name>-drift``), named by the report id and tagged ``healmesh.report_id``, with the
artifacts ``report.html`` (when the window allowed a decision) and ``summary.json``.

This is the system of record: the Airflow worker that ran the check writes through the tracking
server (which proxies artifacts to its store, a folder locally, S3/MinIO in a cluster), and the
gateway and the retraining read them back from there, never from a shared folder.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from healmesh.control.drift_reports import REPORT_HTML, SUMMARY_JSON
from healmesh.control.report_ids import check_report_id
from healmesh.errors import NoModel
from healmesh.registry import configure_mlflow
from healmesh.settings import Settings

REPORT_ID_TAG = "healmesh.report_id"


@dataclass(frozen=True)
class StoredReport:
    run_id: str
    artifact_uri: str  # the run's artifact root


def drift_experiment_name(settings: Settings) -> str:
    return f"{settings.experiment_name}-drift"


def _client(settings: Settings) -> Any:
    from mlflow.tracking import MlflowClient

    configure_mlflow(settings)
    return MlflowClient(tracking_uri=settings.tracking_uri)


def _experiment_id(client: Any, settings: Settings, create: bool) -> str | None:
    name = drift_experiment_name(settings)
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        return str(existing.experiment_id)
    if not create:
        return None
    location = None
    if not settings.tracking_uri.startswith(("http://", "https://")):
        # a store without a server (no proxy): keep artifacts under HEALMESH_HOME, as registry does
        settings.artifact_root.mkdir(parents=True, exist_ok=True)
        location = settings.artifact_root.as_uri()
    # through a server, no location: the server's default, its artifact proxy (mlflow-artifacts:/)
    return str(client.create_experiment(name, artifact_location=location))


def log_report(settings: Settings, report_id: str, html_path: Path | None, summary: dict[str, Any],
               tags: dict[str, str] | None = None) -> StoredReport:
    """One finished MLflow run holding the report's HTML (if any) and JSON summary."""
    check_report_id(report_id, "report id")
    client = _client(settings)
    experiment_id = _experiment_id(client, settings, create=True)
    run = client.create_run(experiment_id, run_name=report_id, tags={REPORT_ID_TAG: report_id, **(tags or {})})
    run_id = run.info.run_id
    try:
        with tempfile.TemporaryDirectory(prefix="healmesh-report-") as tmp:
            if html_path is not None:  # under its artifact name, whatever the file was called
                shutil.copyfile(html_path, Path(tmp) / REPORT_HTML)
                client.log_artifact(run_id, str(Path(tmp) / REPORT_HTML))
            (Path(tmp) / SUMMARY_JSON).write_text(json.dumps(summary, indent=2, default=str))
            client.log_artifact(run_id, str(Path(tmp) / SUMMARY_JSON))
        client.set_terminated(run_id)
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    return StoredReport(run_id=run_id, artifact_uri=str(run.info.artifact_uri))


def find_report(settings: Settings, report_id: str) -> StoredReport:
    """The run of drift check ``report_id``; ``NoModel`` (the registry lacks a run this needs) when
    MLflow has none."""
    check_report_id(report_id)
    client = _client(settings)
    experiment_id = _experiment_id(client, settings, create=False)
    runs = [] if experiment_id is None else client.search_runs(
        [experiment_id], filter_string=f"tags.`{REPORT_ID_TAG}` = '{report_id}'", max_results=1,
        order_by=["attributes.start_time DESC"])
    if not runs:
        raise NoModel(f"no drift report {report_id!r} in the MLflow experiment "
                             f"{drift_experiment_name(settings)!r} at {settings.tracking_uri}")
    return StoredReport(run_id=runs[0].info.run_id, artifact_uri=str(runs[0].info.artifact_uri))


def download(settings: Settings, run_id: str, dst: Path) -> dict[str, Path]:
    """The run's report files, downloaded (through the tracking server) into ``dst``: ``json``
    always, ``html`` when the check had a decision to show."""
    import mlflow.artifacts

    configure_mlflow(settings)
    dst.mkdir(parents=True, exist_ok=True)
    root = Path(mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(dst),
                                                    tracking_uri=settings.tracking_uri))
    files = {"html": root / REPORT_HTML, "json": root / SUMMARY_JSON}
    return {kind: path for kind, path in files.items() if path.is_file()}
