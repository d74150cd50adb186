"""Retraining: a candidate XGBoost from recent labelled traffic (plus a share of the champion's
reference data), judged against the champion on the same recent holdout.

Passing the gate (``policies.gate``: DeLong's paired test of candidate minus champion AUC on that
holdout, no worse than ``retrain.gate.margin`` at level ``alpha``, above ``retrain.gate.floor``, with
enough positives) registers the version. A rejected candidate, or one the holdout cannot tell from
the champion ("insufficient evidence": the champion stays), remains an MLflow run with the outcome,
the interval and the reason. Everything is logged with lineage: trigger, drift check, data window.

A registered candidate becomes the ``challenger`` through ``offer_challenger`` only while no
rollout holds the rollout lease: moving the alias under a running rollout would swap the
scorer's canary slot beneath it. It waits up to ``challenger_wait_s``; then it stays
registered, tagged, without the alias.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd
from sklearn.model_selection import train_test_split

from healmesh import features, registry, schema
from healmesh.control import events
from healmesh.control.lease import LeaseStore
from healmesh.errors import HealmeshError, NoModel
from healmesh.evaluation import classification_metrics
from healmesh.lifecycle import report_store
from healmesh.lifecycle.archive import archive_once
from healmesh.lifecycle.report_ids import check_report_id
from healmesh.lifecycle.window import Window, attach_labels, labelled, read_window
from healmesh.models.bundle import save_bundle
from healmesh.policies.gate import GateOutcome, gate_with_confidence
from healmesh.policies.rollout import ChallengerStep, Lease, challenger_step
from healmesh.settings import Settings
from healmesh.training import fit_xgboost, log_model_run, reference_sample, register


class NotEnoughLabels(HealmeshError, RuntimeError):
    """Too few labelled recent records to train or to judge a candidate."""


class ChallengerWaitTimedOut(HealmeshError, RuntimeError):
    """A rollout held the lease for longer than ``challenger_wait_s``: no challenger was set."""


@dataclass(frozen=True)
class TrainingSet:
    train: pd.DataFrame
    val: pd.DataFrame
    holdout: pd.DataFrame  # recent labelled traffic only: both models are judged on it
    recent_rows: int
    reference_rows: int


def build_training_set(recent: pd.DataFrame, reference: pd.DataFrame, settings: Settings, seed: int) -> TrainingSet:
    n, positives = len(recent), int(recent[schema.active().label].sum()) if len(recent) else 0
    if n < settings.retrain.min_labels or positives < settings.retrain.min_positives:
        raise NotEnoughLabels(
            f"recent traffic has {n} labelled records ({positives} positive); retraining needs at least "
            f"{settings.retrain.min_labels} labelled and {settings.retrain.min_positives} positive. "
            "Send ground truth to POST /api/v1/feedback, or lower HEALMESH_RETRAIN__MIN_LABELS.")
    cols = list(schema.active().feature_names) + [schema.active().label]
    # in a fixed order, not the feature log's: concurrent senders interleave it differently each run,
    # and the same labelled window must give the same split (a gate verdict reproducible from its window)
    recent = recent[cols].sort_values(cols, kind="mergesort").reset_index(drop=True)
    rest, holdout = train_test_split(recent, test_size=settings.retrain.holdout_share,
                                     stratify=recent[schema.active().label], random_state=seed)
    take = min(len(reference), int(round(settings.retrain.reference_share * len(rest))))
    ref = reference[cols].sample(n=take, random_state=seed) if take else reference[cols].head(0)
    pool = pd.concat([rest, ref], ignore_index=True)
    train, val = train_test_split(pool, test_size=0.2, stratify=pool[schema.active().label], random_state=seed + 1)
    return TrainingSet(train.reset_index(drop=True), val.reset_index(drop=True), holdout.reset_index(drop=True),
                       recent_rows=n, reference_rows=take)


def recent_labelled(settings: Settings, redis: Any, window_records: int | None = None) -> tuple[Window, pd.DataFrame]:
    """The recent window (Redis's hot window, then the archive, brought up to date first) and its
    labelled rows: what a candidate is trained and judged on."""
    archive = archive_once(settings, redis)
    window = read_window(redis, settings.key_prefix, last_n=window_records or settings.retrain.window_records,
                         archive=archive)
    return window, labelled(attach_labels(redis, settings.key_prefix, window.frame, archive=archive))


def run_retrain(settings: Settings, redis: Any, *, trigger: str, drift_check_id: str | None = None,
                window_records: int | None = None, seed: int = 0) -> dict[str, Any]:
    drift = None
    if drift_check_id is not None:  # it names the report that is read: checked, and found in MLflow, first
        drift = report_store.find_report(settings, check_report_id(drift_check_id))
    t0 = time.perf_counter()
    name = settings.xgb_registered_name
    champion = registry.version_by_alias(settings, name, settings.champion_alias)
    if champion is None:
        raise NoModel(f"no {settings.champion_alias} for {name}: nothing to compare a candidate with")
    window, recent = recent_labelled(settings, redis, window_records)
    reference = registry.reference_for_version(settings, name, champion.version, champion.run_id)
    data = build_training_set(recent, reference, settings, seed)

    model, meta = fit_xgboost(data.train, data.val, seed)
    champion_bundle = registry.load_version(settings, name, champion.version)
    y = data.holdout[schema.active().label].to_numpy()
    cand_scores = model.predict_proba(features.encode_frame(data.holdout))
    champ_scores = champion_bundle.predict_frame(data.holdout)
    cand_metrics = classification_metrics(y, cand_scores, meta.threshold)
    champ_metrics = classification_metrics(y, champ_scores, champion_bundle.meta.threshold)
    verdict = gate_with_confidence(y, cand_scores, champ_scores, settings.retrain.gate)
    recorded = verdict.as_mlflow()
    meta = replace(meta, metrics=cand_metrics)
    train_seconds = round(time.perf_counter() - t0, 3)

    tags = {"healmesh.trigger": trigger, "healmesh.drift_check": drift_check_id or "",
            "healmesh.window_first_id": window.first_id or "", "healmesh.window_last_id": window.last_id or "",
            "healmesh.window_first_ts": f"{window.first_ts or 0:.3f}",
            "healmesh.window_last_ts": f"{window.last_ts or 0:.3f}",
            "healmesh.champion_version": champion.version, "healmesh.gate": verdict.outcome.value,
            "healmesh.gate_reason": verdict.reason}
    with tempfile.TemporaryDirectory(prefix="healmesh-retrain-") as tmp:
        drift_artifacts = {}
        if drift is not None:  # the report this run acts on, read from MLflow and kept with the run
            tags |= {"healmesh.drift_run": drift.run_id, "healmesh.drift_report": drift.artifact_uri}
            got = report_store.download(settings, drift.run_id, Path(tmp) / "drift")
            drift_artifacts = {f"drift_report_{kind}": path for kind, path in got.items()}
        bundle_dir = save_bundle(model, meta, Path(tmp) / "xgboost")
        logged = log_model_run(
            settings, "xgboost", bundle_dir, meta, run_name="retrain-xgboost",
            params={"seed": seed, "train_rows": len(data.train), "val_rows": len(data.val),
                    "holdout_rows": len(data.holdout), "recent_labelled_rows": data.recent_rows,
                    "reference_rows": data.reference_rows, "reference_share": settings.retrain.reference_share,
                    **{f"gate_{k}": v for k, v in settings.retrain.gate.model_dump().items()},
                    **recorded["params"], **meta.params},
            metrics={**{f"holdout_{k}": v for k, v in cand_metrics.items()},
                     **{f"champion_holdout_{k}": v for k, v in champ_metrics.items()}, **recorded["metrics"]},
            tags=tags, example=data.holdout,
            reference=reference_sample(data.train, 5_000, seed), artifacts=drift_artifacts)
    out = {"passed": verdict.passed, "gate": verdict.outcome.value, "reason": verdict.reason,
           "interval": [verdict.lower, verdict.upper], "run_id": logged.run_id,
           "candidate": cand_metrics, "champion": champ_metrics, "champion_version": champion.version,
           "version": None, "train_rows": len(data.train), "recent_labelled_rows": data.recent_rows,
           "train_seconds": train_seconds, "window": window.describe()}
    if verdict.passed:
        _, version = register(settings, "xgboost", logged, tags={"healmesh.trigger": trigger,
                                                                  "healmesh.drift_check": drift_check_id or "",
                                                                  "healmesh.challenger": "pending"})
        out["version"] = version
        out["registered_at"] = time.time()
        events.record(redis, settings.key_prefix, "candidate_registered",
                      f"v{version} registered: {verdict.reason}", version=version, run_id=logged.run_id)
    else:
        kept = ("champion kept, insufficient evidence" if verdict.outcome is GateOutcome.INSUFFICIENT_EVIDENCE
                else "candidate rejected")
        events.record(redis, settings.key_prefix, "candidate_rejected", f"{kept}: {verdict.reason}",
                      run_id=logged.run_id, gate=verdict.outcome.value)
    return out


def offer_challenger(settings: Settings, redis: Any, version: str, *, holder: str, waited_s: float,
                     now: float) -> dict[str, Any]:
    """One attempt to make ``version`` the challenger. Returns ``{"installed": bool, ...}``; raises
    ``ChallengerWaitTimedOut`` once it has waited ``challenger_wait_s``."""
    name, prefix = settings.xgb_registered_name, settings.key_prefix
    leases = LeaseStore(redis, prefix)
    lease = leases.current()
    step = challenger_step(lease, waited_s, settings.challenger_wait_s)
    if step is ChallengerStep.INSTALL:
        # hold the lease while moving the alias, so no rollout starts in between
        held = leases.acquire(Lease(holder, version, now), ttl_s=60.0)
        if held is not None and held.holder == holder:
            try:
                registry.set_alias(settings, name, settings.challenger_alias, version)
                registry.tag_version(settings, name, version, {"healmesh.challenger": "installed"})
            finally:
                leases.release(holder)
            events.record(redis, prefix, "challenger_registered",
                          f"v{version} is now the {settings.challenger_alias} (after {waited_s:.0f} s)",
                          version=version, waited_s=round(waited_s, 1))
            return {"installed": True, "version": version, "waited_s": round(waited_s, 1)}
        lease, step = held, ChallengerStep.WAIT  # a rollout took it first
    blocker = lease.describe() if lease else "another rollout"
    if step is ChallengerStep.GIVE_UP:
        reason = (f"v{version} stays registered without the {settings.challenger_alias} alias: the rollout "
                  f"{blocker} held the lease for more than {settings.challenger_wait_s:.0f} s "
                  "(HEALMESH_CHALLENGER_WAIT_S). Roll it out by hand when that rollout has ended: "
                  f"canary_rollout with version={version}.")
        registry.tag_version(settings, name, version, {"healmesh.challenger": "wait_timed_out",
                                                       "healmesh.challenger_reason": reason})
        events.record(redis, prefix, "challenger_wait_timed_out", reason, version=version, blocker=blocker)
        raise ChallengerWaitTimedOut(reason)
    if not any(e["kind"] == "challenger_waiting" and e["data"].get("version") == version
               for e in events.recent(redis, prefix, 200)):
        events.record(redis, prefix, "challenger_waiting", f"v{version} waits to become the "
                      f"{settings.challenger_alias}: the rollout {blocker} is running", version=version,
                      blocker=blocker)
    return {"installed": False, "version": version, "waiting_for": blocker}
