"""The staged canary rollout of a challenger: prepare, stages, then promote or roll back.

One rollout at a time: ``prepare`` takes the rollout lease (``healmesh.control.lease``), every stage check
extends it, ``promote`` and ``rollback`` release it. A retrain waits for the lease before it moves
``challenger``, and ``abort`` breaks it, so a running stage learns on its next check that it must
stop.

- prepare: the version comes from the ``version`` param, else from the asset event that started
  the run (refused if ``challenger`` no longer points at it), else from ``challenger``; the
  XGBoost scorer loads it into its canary slot (reload now) and the slot is warmed up;
- shadow (``canary.shadow``, on by default): the rollout's ``shadow`` phase mirrors live traffic to
  the canary (no user sees its answers) and the judge reads its errors and latency, its estimated
  quality and its disagreement with the champion before any user is routed to it;
- each stage: the gateway gives the canary its percentage of the XGBoost share, then every
  ``check_every_s``: the lease must still be ours and the canary slot must still serve the version
  under test (else the stage fails at once), and the sequential judge (``healmesh.policies.canary``)
  compares canary with stable on counter increases that survive gateway restarts
  (``healmesh.policies.evidence``) and on the live answers: pass, rollback, or check again. Stable
  is pooled over the rollout's stages (at 100 % it serves nothing of its own);
- promote: ``champion`` moves to the new version (the previous one, as prepare saw it, is tagged
  for `healmesh rollback`), stable serves it, the canary slot empties;
- rollback: the mesh first, through the gateway alone (stage 0, status ``rolled_back``, or
  ``failed`` when the promotion failed), then the registry (``challenger`` removed; a champion
  that a failed promotion moved goes back), the reason recorded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from healmesh import registry, schema
from healmesh.control import events
from healmesh.control.lease import LeaseStore
from healmesh.control.state import RolloutStatus
from healmesh.errors import LeaseLost, RolloutFailed
from healmesh.lifecycle.mesh import MeshClient
from healmesh.lifecycle.window import attach_labels, labelled, read_shadow, read_window
from healmesh.policies import canary as analysis
from healmesh.policies import routing
from healmesh.policies.breaker import State
from healmesh.policies.estimation import Calibrator
from healmesh.policies.evidence import CounterEvidence, Scrape
from healmesh.policies.rollout import (
    ACTIVE,
    PROMOTE_FAILED,
    ROLLOUT_ABORTED,
    STAGE_FAILED,
    Lease,
    StopKind,
    lease_guard,
    stage_guard,
)
from healmesh.settings import Settings


def _v(version: str | None) -> str:
    return f"v{version}" if version else "none"


def prepare(settings: Settings, mesh: MeshClient, redis: Any, *, holder: str, version: str | None = None,
            event_version: str | None = None, now: Callable[[], float] = time.time) -> dict[str, Any]:
    """Take the lease and load the version into the canary slot. ``version``: asked for by hand
    (becomes the challenger); ``event_version``: the one the triggering asset event announced."""
    name, alias = settings.xgb_registered_name, settings.challenger_alias
    challenger = registry.version_by_alias(settings, name, alias)
    target = version or event_version or (challenger.version if challenger else None)
    if target is None:
        raise RolloutFailed(f"{name} has no {alias}: nothing to roll out")
    held = LeaseStore(redis, settings.key_prefix).acquire(Lease(holder, target, now()), settings.rollout.lease_ttl_s)
    if held is None or held.holder != holder:
        raise RolloutFailed(f"another rollout holds the lease ({held.describe() if held else 'unknown'}): one "
                            "rollout at a time; let it end, or end it with `healmesh rollout abort`")
    if version is None and event_version is not None:
        if challenger is None or challenger.version != event_version:
            raise RolloutFailed(f"v{event_version} was announced, but {alias} is now "
                                f"{_v(challenger.version if challenger else None)}: not rolling out a version "
                                f"that is no longer the {alias}")
    elif challenger is None or challenger.version != target:
        registry.set_alias(settings, name, alias, target)
    champion = registry.version_by_alias(settings, name, settings.champion_alias)
    if champion is not None and champion.version == target:
        raise RolloutFailed(f"v{target} is already the champion")
    slots = mesh.reload_xgboost()
    loaded = (slots.get("canary") or {}).get("version")
    if loaded != target:
        raise RolloutFailed(f"the XGBoost scorer's canary slot holds {loaded!r}, not v{target}")
    sample = registry.reference_for_version(settings, name, target).head(40)
    mesh.warm_up_canary([{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
                         for r in sample[list(schema.active().feature_names)].to_dict("records")])
    previous = champion.version if champion else None
    events.record(redis, settings.key_prefix, "rollout_started", f"canary rollout of v{target} started",
                  version=target, champion=previous, rollout=holder)
    return {"version": target, "champion": previous, "rollout": holder}


Calibrators = dict[str, Calibrator | None]  # variant -> its version's calibrator


def _answers(frame: Any, variant: str, since_wall: float, calibrator: Calibrator | None) -> analysis.Answers:
    """A variant's answers; the estimate reads them calibrated (as served when the version has no
    calibrator), live AUC reads the scores as served (a rank statistic)."""
    part = frame[(frame["variant"] == variant) & (frame["ts"] >= since_wall)]
    done = labelled(part)
    served = part["probability"].to_numpy(dtype=float)
    return analysis.Answers(calibrator.apply(served) if calibrator else served,
                            done["probability"].to_numpy(dtype=float), done[schema.active().label].to_numpy(dtype=int))


def _stage_quality(redis: Any, settings: Settings, stage_started: float, rollout_started: float,
                   cfg: analysis.CanaryConfig, calibrators: Calibrators,
                   shadow: bool) -> tuple[analysis.AucDiff | None, analysis.MeanDiff | None]:
    """Canary answers of this stage (in the shadow stage: its shadow answers) against stable answers
    since the rollout started (at 100 % stable serves nothing, and the champion does not change
    during a rollout); in the shadow stage also the canary's disagreement with the champion."""
    since = min(stage_started, rollout_started)
    window = read_window(redis, settings.key_prefix, last_n=50_000, since_s=max(time.time() - since, 1.0))
    frame = attach_labels(redis, settings.key_prefix, window.frame)
    stable = _answers(frame, routing.XGB_STABLE, rollout_started, calibrators.get(routing.XGB_STABLE))
    if not shadow:
        canary = _answers(frame, routing.XGB_CANARY, stage_started, calibrators.get(routing.XGB_CANARY))
        return analysis.quality_evidence(canary, stable, cfg), None
    mirrored = read_shadow(redis, settings.key_prefix, since_wall=stage_started)
    mirrored = attach_labels(redis, settings.key_prefix, mirrored[mirrored["variant"] == routing.XGB_CANARY])
    canary = _answers(mirrored, routing.XGB_CANARY, stage_started, calibrators.get(routing.XGB_CANARY))
    disagreed = int((~mirrored["agree"].astype(bool)).sum())
    return analysis.quality_evidence(canary, stable, cfg), analysis.disagreement_evidence(len(mirrored), disagreed)


def version_calibrator(settings: Settings) -> Callable[[str], Calibrator | None]:
    def load(version: str) -> Calibrator | None:
        return registry.load_version(settings, settings.xgb_registered_name, version).calibrator()

    return load


def _earlier_stages(redis: Any, prefix: str, holder: str,
                    fallback_start: float) -> tuple[float, list[dict[str, float]]]:
    """When this rollout started, and what stable served in its stages that passed (their sums)."""
    mine = events.for_rollout(redis, prefix, holder)
    started = [e["when"] for e in mine if e["kind"] == "rollout_started"]
    sums = [e["data"]["stable"]["sums"] for e in mine
            if e["kind"] == "stage_passed" and isinstance(e["data"].get("stable"), dict)
            and "sums" in e["data"]["stable"]]
    return (min(started) if started else fallback_start), sums


def _canary_slot(mesh: MeshClient) -> str | None:
    return (mesh.xgboost_slots().get("canary") or {}).get("version")


def run_stage(settings: Settings, mesh: MeshClient, redis: Any, version: str, stage: int,
              cfg: analysis.CanaryConfig | None = None, *, holder: str, sleep: Callable[[float], None] = time.sleep,
              clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
              calibrator: Callable[[str], Calibrator | None] | None = None) -> dict[str, Any]:
    """One canary stage: the canary takes ``stage`` % of the XGBoost share until the judge decides.
    ``calibrator``: a version's calibrator (default: from its registered bundle)."""
    return _judged(settings, mesh, redis, version, stage, cfg or settings.canary, holder=holder, sleep=sleep,
                   clock=clock, wall=wall, calibrator=calibrator)


def run_shadow(settings: Settings, mesh: MeshClient, redis: Any, version: str,
               cfg: analysis.CanaryConfig | None = None, *, holder: str, sleep: Callable[[float], None] = time.sleep,
               clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time,
               calibrator: Callable[[str], Calibrator | None] | None = None) -> dict[str, Any]:
    """The shadow stage before the first: the gateway mirrors live traffic to the canary, whose
    answers no user sees, until the judge decides on its errors, latency, estimated quality and
    disagreement with the champion. Off (``HEALMESH_CANARY__SHADOW=false``): nothing happens."""
    cfg = cfg or settings.canary
    if not cfg.shadow:
        return {"stage": SHADOW_STAGE, "version": version,
                "skipped": "the shadow stage is off (HEALMESH_CANARY__SHADOW)"}
    return _judged(settings, mesh, redis, version, 0, cfg, holder=holder, sleep=sleep, clock=clock, wall=wall,
                   calibrator=calibrator)


SHADOW_STAGE = "shadow"


def _gate_lower_bound(settings: Settings, version: str) -> float | None:
    """The retrain gate's lower bound on (challenger - champion) AUC, recorded with the version's run
    (None for a version the gate did not judge, or a registry that does not answer)."""
    try:
        value = registry.version_info(settings, settings.xgb_registered_name, version).metrics.get("gate_ci_lower")
    except Exception:  # noqa: BLE001 - no bound is the conservative answer: the disagreement veto stands
        return None
    return float(value) if value is not None else None


def _judged(settings: Settings, mesh: MeshClient, redis: Any, version: str, stage: int, cfg: analysis.CanaryConfig,
            *, holder: str, sleep: Callable[[float], None], clock: Callable[[], float], wall: Callable[[], float],
            calibrator: Callable[[str], Calibrator | None] | None) -> dict[str, Any]:
    """A stage (``stage`` 0: the shadow stage) held until the sequential judge passes or fails it."""
    prefix = settings.key_prefix
    leases = LeaseStore(redis, prefix)
    shadow = stage == 0
    name = "the shadow stage" if shadow else f"stage {stage}%"

    def guard(details: dict[str, Any]) -> None:
        """Fail the stage unless the lease is ours and the canary slot serves ``version``."""
        stop = stage_guard(leases.refresh(holder, settings.rollout.lease_ttl_s), holder, _canary_slot(mesh), version)
        if stop is not None:
            events.record(redis, prefix, STAGE_FAILED, f"{name} failed: {stop.reason}",
                          **{**details, "status": analysis.StageStatus.FAIL, "reasons": [stop.reason]})
            raise (LeaseLost if stop.kind is StopKind.LEASE_LOST else RolloutFailed)(f"{name}: {stop.reason}")

    base: dict[str, Any] = {"stage": SHADOW_STAGE if shadow else stage, "version": version, "rollout": holder}
    guard(base)
    load = calibrator or version_calibrator(settings)
    stable_version = (mesh.xgboost_slots().get("stable") or {}).get("version")
    calibrators: Calibrators = {routing.XGB_CANARY: load(version),
                                routing.XGB_STABLE: load(stable_version) if stable_version else None}
    base["calibrated"] = {variant: c is not None for variant, c in calibrators.items()}
    proven_better = _gate_lower_bound(settings, version) if shadow else None
    # taken before the routing change: a gateway started after this counts all its calls
    started_wall = wall()
    if shadow:
        mesh.set_rollout(0, version, RolloutStatus.SHADOW, why=f"shadow stage for v{version}: it scores mirrored "
                                                                 "traffic, no user sees its answers")
    else:
        mesh.set_rollout(stage, version, RolloutStatus.RUNNING, why=f"canary stage {stage}% for v{version}")
    rollout_started, earlier = _earlier_stages(redis, prefix, holder, started_wall)
    evidence = CounterEvidence(stage_started_at=started_wall)
    evidence.add(Scrape.parse(mesh.gateway_metrics()))
    started = clock()
    while True:
        sleep(cfg.check_every_s)
        resets = evidence.add(Scrape.parse(mesh.gateway_metrics()))
        if resets:
            events.record(redis, prefix, "counters_reset", f"{name}: the gateway's counters restarted; "
                          f"{'; '.join(r.detail for r in resets)}", **base, resets=[r.as_dict() for r in resets])
        # after the scrape: what it counted was served while the guard still held
        guard({**base, "resets": [r.as_dict() for r in evidence.resets]})
        state = mesh.gateway_state()
        totals = evidence.totals
        stable_here = analysis.stats_from_increases(totals, routing.XGB_STABLE)
        quality, disagreement = _stage_quality(redis, settings, started_wall, rollout_started, cfg, calibrators,
                                               shadow)
        verdict = analysis.analyse(
            analysis.stats_from_increases(totals, routing.XGB_CANARY), analysis.pooled(stable_here, earlier),
            clock() - started, cfg,
            canary_breaker_open=state["breakers"][routing.XGB_CANARY]["state"] == State.OPEN,
            quality=quality, disagreement=disagreement, proven_better=proven_better)
        if verdict.status is analysis.StageStatus.WAIT:
            continue
        details = {**base, "status": verdict.status, "reasons": list(verdict.reasons),
                   "resets": [r.as_dict() for r in evidence.resets], **verdict.details,
                   # this stage's own stable calls: the next stages pool them (not the pooled total)
                   "stable": stable_here.as_dict(), "stable_pooled": verdict.details.get("stable")}
        if verdict.status is analysis.StageStatus.FAIL:
            events.record(redis, prefix, STAGE_FAILED, f"{name} failed: {'; '.join(verdict.reasons)}", **details)
            raise RolloutFailed(f"{name}: {'; '.join(verdict.reasons)}")
        events.record(redis, prefix, "stage_passed", f"{name} passed after {details['elapsed_s']:.0f}s: "
                      f"{details['judge']['brief']}", **details)
        return details


def promote(settings: Settings, mesh: MeshClient, redis: Any, version: str, *, holder: str,
            previous: str | None) -> dict[str, Any]:
    """``previous``: the champion when the rollout started (a retry must not read back the version a
    failed try already moved ``champion`` to). Safe to repeat."""
    name = settings.xgb_registered_name
    leases = LeaseStore(redis, settings.key_prefix)
    lost = lease_guard(leases.refresh(holder, settings.rollout.lease_ttl_s), holder)
    if lost is not None:
        raise LeaseLost(f"promote of v{version}: {lost.reason}")
    registry.tag_version(settings, name, version, {"healmesh.rollout": "promoted",
                                                   "healmesh.previous_champion": previous or ""})
    # order matters for zero errors: stable takes the new version before the canary share goes
    registry.set_alias(settings, name, settings.champion_alias, version)
    mesh.reload_xgboost()
    mesh.set_rollout(0, None, RolloutStatus.PROMOTED, why=f"v{version} promoted after all stages passed")
    challenger = registry.version_by_alias(settings, name, settings.challenger_alias)
    if challenger is not None and challenger.version == version:
        registry.delete_alias(settings, name, settings.challenger_alias)
    slots = mesh.reload_xgboost()
    if (slots.get("stable") or {}).get("version") != version:
        raise RolloutFailed(f"after promotion the stable slot serves {slots.get('stable')}, not v{version}")
    events.record(redis, settings.key_prefix, "promoted", f"v{version} promoted to champion "
                  f"(previous: {_v(previous)})", version=version, previous=previous, rollout=holder)
    leases.release(holder)
    return {"champion": version, "previous": previous}


def record_promote_failure(settings: Settings, redis: Any, version: str, holder: str, attempt: int,
                           exc: BaseException) -> None:
    events.record(redis, settings.key_prefix, PROMOTE_FAILED,
                  f"promote of v{version} failed (try {attempt}): {type(exc).__name__}: {exc}"[:2000],
                  version=version, rollout=holder, attempt=attempt)


def rollback(settings: Settings, mesh: MeshClient, redis: Any, version: str | None, reason: str, *,
             status: RolloutStatus = RolloutStatus.ROLLED_BACK, holder: str | None = None,
             previous_champion: str | None = None) -> dict[str, Any]:
    """End a rollout that did not promote; safe to repeat. The mesh is made safe first, through the
    gateway alone (no registry needed): canary weight 0, stable serves the champion."""
    name, prefix = settings.xgb_registered_name, settings.key_prefix
    failed = status is RolloutStatus.FAILED
    mesh.set_rollout(0, None, status, why=f"{status}: v{version}: {reason}"[:500], note=reason[:500])
    if failed and not any(e["kind"] == "rollout_failed" for e in events.for_rollout(redis, prefix, holder or "")):
        events.record(redis, prefix, "rollout_failed", f"rollout of v{version} failed: {reason}; canary at 0 %, "
                      "stable serves the champion", version=version, rollout=holder, reason=reason)
    # then the registry (a registry that is down fails this try; the task retries it)
    challenger = registry.version_by_alias(settings, name, settings.challenger_alias)
    if challenger is not None and (version is None or challenger.version == version):
        registry.delete_alias(settings, name, settings.challenger_alias)
    champion = registry.version_by_alias(settings, name, settings.champion_alias)
    if failed and previous_champion and champion is not None and champion.version == version:
        registry.set_alias(settings, name, settings.champion_alias, previous_champion)
        champion = registry.version_by_alias(settings, name, settings.champion_alias)
    if version:
        registry.tag_version(settings, name, version, {"healmesh.rollout": status.value,
                                                       "healmesh.rollout_reason": reason[:5000]})
    mesh.reload_xgboost()
    kept = champion.version if champion else None
    if failed:
        events.record(redis, prefix, "registry_restored", f"after the failed rollout of v{version}: challenger "
                      f"removed, champion {_v(kept)}", version=version, champion=kept, rollout=holder)
    else:
        events.record(redis, prefix, "rolled_back", f"v{version} rolled back: {reason}", version=version,
                      champion=kept, rollout=holder)
    if holder:
        LeaseStore(redis, prefix).release(holder)
    return {"rolled_back": version, "status": status.value, "reason": reason, "champion": kept}


def abort(settings: Settings, mesh: MeshClient, redis: Any, why: str, who: str) -> dict[str, Any]:
    """`healmesh rollout abort`: break the lease (the running stage fails at its next check), roll
    the rollout back now and record who and why."""
    lease = LeaseStore(redis, settings.key_prefix).break_()
    current = mesh.rollout()
    if lease is None and current.get("status") not in ACTIVE:
        raise RolloutFailed("no rollout is running and none holds the lease: nothing to abort")
    version = (lease.version if lease else None) or current.get("canary_version")
    holder = lease.holder if lease else None
    reason = f"aborted by {who}: {why}"
    events.record(redis, settings.key_prefix, ROLLOUT_ABORTED, f"rollout of v{version} {reason}",
                  version=version, rollout=holder, who=who, why=why)
    return {**rollback(settings, mesh, redis, version, reason), "aborted": holder}


def manual_rollback(settings: Settings, mesh: MeshClient, redis: Any, to_version: str | None = None) -> dict[str, Any]:
    """`healmesh rollback`: champion back to the previous version (or ``to_version``)."""
    name = settings.xgb_registered_name
    current = registry.version_by_alias(settings, name, settings.champion_alias)
    if current is None:
        raise RolloutFailed(f"{name} has no champion")
    target = to_version or registry.version_info(settings, name, current.version).tags.get("healmesh.previous_champion")
    if not target:
        raise RolloutFailed(f"v{current.version} records no previous champion; pass --to VERSION")
    registry.version_info(settings, name, target)  # fails clearly when the version does not exist
    registry.set_alias(settings, name, settings.champion_alias, target)
    mesh.reload_xgboost()
    events.record(redis, settings.key_prefix, "manual_rollback", f"champion moved back from v{current.version} "
                  f"to v{target}", version=target, previous=current.version)
    return {"champion": target, "previous": current.version}
