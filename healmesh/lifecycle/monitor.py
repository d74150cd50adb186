"""One drift check: the recent window against the champion's reference sample, decided by
``policies.drift_alarm.decide`` with the champion's own feature importance, its performance
estimated from its calibrated answers (CBPE, checked against the labels that came back), and its
live quality.

Stores the Evidently report (our decision and its reasons at the top) and the JSON summary as an
MLflow run of the drift experiment, lists it in the control state (the gateway's /ui serves it
from there) and mirrors it into ``drift_reports/`` (best effort); publishes the scores to the
control state (the gateway exports them as metrics); records a lifecycle event. Returns a plain
dict (what the DAG passes on to the retraining DAG).
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from healmesh import registry, schema
from healmesh.control import events
from healmesh.control.drift_reports import REPORT_HTML, SUMMARY_JSON
from healmesh.control.state import DriftSummary
from healmesh.control.sync_store import SyncControlStore
from healmesh.errors import NoModel
from healmesh.lifecycle import report_store, reports
from healmesh.lifecycle.archive import archive_once
from healmesh.lifecycle.window import attach_labels, labelled, read_window
from healmesh.models.bundle import Bundle
from healmesh.models.xgb import XGBoostModel
from healmesh.policies.drift import quality_check
from healmesh.policies.drift_alarm import decide, read_estimate, scores_for_metrics
from healmesh.settings import Settings

log = logging.getLogger(__name__)


def _importance(bundle: Bundle, name: str, version: str) -> dict[str, float] | None:
    """The served champion's share of total gain per feature; None when it has none to give (another
    model kind), and then the decision goes without the importance veto and says so."""
    if not isinstance(bundle.model, XGBoostModel):
        log.info("champion %s v%s is a %s model: drift is judged without feature importance", name, version,
                 bundle.meta.kind)
        return None
    return bundle.model.importance()


def run_drift_check(settings: Settings, redis: Any, *, window_records: int | None = None,
                    window_minutes: float | None = None) -> dict[str, Any]:
    t0 = time.perf_counter()
    name = settings.xgb_registered_name
    champion = registry.version_by_alias(settings, name, settings.champion_alias)
    if champion is None:
        raise NoModel(f"no {settings.champion_alias} for {name}: train and register a model first")
    reference = registry.reference_for_version(settings, name, champion.version, champion.run_id)
    info = registry.version_info(settings, name, champion.version)

    records = window_records or settings.drift_window_records
    minutes = window_minutes if window_minutes is not None else settings.drift_window_minutes
    archive = archive_once(settings, redis)  # past Redis's hot window the rows and labels are there
    window = read_window(redis, settings.key_prefix, last_n=records, since_s=minutes * 60 if minutes else None,
                         archive=archive)
    current = attach_labels(redis, settings.key_prefix, window.frame, archive=archive)

    t = settings.drift
    # live quality of the champion itself: its own answers that have a label
    served = current[(current["model"] == "xgboost") & (current["model_version"] == champion.version)]
    mine = labelled(served)
    label = schema.active().label
    quality = quality_check(mine[label].to_numpy(), mine["probability"].to_numpy(),
                            info.metrics.get("holdout_roc_auc"), t)
    bundle = registry.load_version(settings, name, champion.version)
    estimated = read_estimate(bundle.calibrator(), served["probability"].to_numpy(dtype=float),
                              mine[label].to_numpy(dtype=int), mine["probability"].to_numpy(dtype=float),
                              info.metrics.get("holdout_roc_auc"), bundle.meta.threshold, t)
    result = decide(reference, current, t, quality, importance=_importance(bundle, name, champion.version),
                    estimated=estimated)
    checked_at = time.time()
    report_id = reports.report_name(checked_at, champion.version)
    store = SyncControlStore(redis, settings.key_prefix)
    with tempfile.TemporaryDirectory(prefix="healmesh-drift-") as tmp:
        html_path = reports.render_html(Path(tmp), report_id, result, reference, current, t)
        summary = reports.summary_of(
            report_id, result, checked_at=checked_at, model_version=champion.version, has_html=html_path is not None,
            extra={"window": window.describe(), "thresholds": t.model_dump(), "champion_run": info.run_id})
        # the system of record: an MLflow run through the tracking server, then the control state's listing
        stored = report_store.log_report(settings, report_id, html_path, summary, tags={
            "healmesh.decision": result.decision.value, "healmesh.champion_version": champion.version,
            "healmesh.champion_run": info.run_id or ""})
        record = reports.record_of(summary, stored.run_id, stored.artifact_uri)
        store.list_report(record)
        mirror = reports.write_mirror(settings.drift_reports_dir, record, html_path, summary, store.reports())
    seconds = round(time.perf_counter() - t0, 3)
    store.publish_drift(DriftSummary(
        checked_at=checked_at, model_version=champion.version, window_size=result.window_size,
        decision=result.decision, share_drifted=result.share_drifted, scores=scores_for_metrics(result),
        report=summary["html"]))
    events.record(redis, settings.key_prefix, f"drift_{result.decision.value}", result.headline,
                  check_id=report_id, run_id=stored.run_id, share=result.share_drifted,
                  drifted=result.drifted_features[:8])
    return {"check_id": report_id, "decision": result.decision, "window": window.describe(),
            "window_size": result.window_size, "share_drifted": result.share_drifted,
            "drifted_features": result.drifted_features, "reasons": list(result.reasons),
            "headline": result.headline,
            "live_auc": quality.live_auc, "holdout_auc": quality.reference_auc,
            "estimated_auc": estimated.estimate.estimated_auc if estimated.estimate else None,
            "estimate_note": estimated.note,
            # where the report lives (MLflow), and the local mirror when it was written
            "run_id": stored.run_id, "report": f"{stored.artifact_uri}/{REPORT_HTML}" if html_path else None,
            "summary": f"{stored.artifact_uri}/{SUMMARY_JSON}", "mirror": str(mirror) if mirror else None,
            "champion_version": champion.version, "seconds": seconds,
            # XComs are JSON: no NaN for a window without statistics
            "max_psi": max((f.psi for f in result.features.values()), default=None)}
