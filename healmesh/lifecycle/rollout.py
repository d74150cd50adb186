"""The staged canary rollout of a challenger: prepare, stages, then promote or roll back.

- prepare: the XGBoost scorer loads the ``challenger`` into its canary slot (reload now);
- each stage: the gateway gives the canary its percentage of the XGBoost share, then every
  ``check_every_s`` the analysis compares canary with stable; a failed check ends the stage at
  once, a pass needs ``interval_s`` and ``min_requests``, and ``deadline_s`` bounds the wait;
- promote: ``champion`` moves to the new version (the old one stays registered and is tagged as
  the previous champion for `healmesh rollback`), stable serves it, the canary slot empties;
- rollback: canary weight 0, ``challenger`` removed, champion untouched, the reason recorded.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from healmesh import registry, schema
from healmesh.lifecycle import canary as analysis
from healmesh.lifecycle import events
from healmesh.lifecycle.mesh import MeshClient
from healmesh.lifecycle.window import attach_labels, labelled, read_window
from healmesh.policies import routing
from healmesh.settings import Settings


class RolloutFailed(RuntimeError):
    """A stage failed its analysis (or the rollout could not start): roll back."""


def canary_config(s: Settings) -> analysis.CanaryConfig:
    return analysis.CanaryConfig(
        stages=tuple(s.canary_stages), interval_s=s.canary_interval_s, deadline_s=s.canary_deadline_s,
        check_every_s=s.canary_check_every_s, min_requests=s.canary_min_requests,
        min_latency_sample=s.canary_min_latency_sample,
        max_error_rate_delta=s.canary_max_error_rate_delta, max_p95_ratio=s.canary_max_p95_ratio,
        p95_slack_ms=s.canary_p95_slack_ms, min_quality_labels=s.canary_min_quality_labels,
        min_quality_positives=s.canary_min_quality_positives, max_auc_drop=s.canary_max_auc_drop)


def prepare(settings: Settings, mesh: MeshClient, redis: Any, version: str | None = None) -> dict[str, Any]:
    name = settings.xgb_registered_name
    challenger = registry.version_by_alias(settings, name, settings.challenger_alias)
    if version is None:
        if challenger is None:
            raise RolloutFailed(f"{name} has no {settings.challenger_alias}: nothing to roll out")
        version = challenger.version
    elif challenger is None or challenger.version != version:
        registry.set_alias(settings, name, settings.challenger_alias, version)
    champion = registry.version_by_alias(settings, name, settings.champion_alias)
    if champion is not None and champion.version == version:
        raise RolloutFailed(f"v{version} is already the champion")
    slots = mesh.reload_xgboost()
    loaded = (slots.get("canary") or {}).get("version")
    if loaded != version:
        raise RolloutFailed(f"the XGBoost scorer's canary slot holds {loaded!r}, not v{version}")
    sample = registry.reference_for_version(settings, name, version).head(40)
    mesh.warm_up_canary([{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()}
                         for r in sample[list(schema.FEATURE_NAMES)].to_dict("records")])
    events.record(redis, settings.key_prefix, "rollout_started", f"canary rollout of v{version} started",
                  version=version, champion=champion.version if champion else None)
    return {"version": version, "champion": champion.version if champion else None}


def _stage_quality(redis: Any, settings: Settings, since: float, cfg: analysis.CanaryConfig) -> dict[str, analysis.Quality]:
    window = read_window(redis, settings.key_prefix, last_n=50_000, since_s=max(time.time() - since, 1.0))
    frame = labelled(attach_labels(redis, settings.key_prefix, window.frame))
    out = {}
    for variant in (routing.XGB_CANARY, routing.XGB_STABLE):
        part = frame[frame["variant"] == variant]
        out[variant] = analysis.quality(part[schema.LABEL].to_numpy(), part["probability"].to_numpy(), cfg)
    return out


def run_stage(settings: Settings, mesh: MeshClient, redis: Any, version: str, stage: int,
              cfg: analysis.CanaryConfig | None = None, *, sleep: Callable[[float], None] = time.sleep,
              clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    cfg = cfg or canary_config(settings)
    mesh.set_rollout(stage, version, "running", why=f"canary stage {stage}% for v{version}")
    before = analysis.parse_metrics(mesh.gateway_metrics())
    started_wall, started = time.time(), clock()
    while True:
        sleep(cfg.check_every_s)
        after = analysis.parse_metrics(mesh.gateway_metrics())
        state = mesh.gateway_state()
        quality = _stage_quality(redis, settings, started_wall, cfg)
        verdict = analysis.analyse(
            analysis.upstream_stats(before, after, routing.XGB_CANARY),
            analysis.upstream_stats(before, after, routing.XGB_STABLE),
            clock() - started, cfg,
            canary_breaker_open=state["breakers"][routing.XGB_CANARY]["state"] == "open",
            canary_quality=quality[routing.XGB_CANARY], stable_quality=quality[routing.XGB_STABLE])
        if verdict.status == "wait":
            continue
        details = {"stage": stage, "version": version, "status": verdict.status, "reasons": list(verdict.reasons),
                   **verdict.details}
        if verdict.status == "fail":
            events.record(redis, settings.key_prefix, "stage_failed",
                          f"stage {stage}% failed: {'; '.join(verdict.reasons)}", **details)
            raise RolloutFailed(f"stage {stage}%: {'; '.join(verdict.reasons)}")
        events.record(redis, settings.key_prefix, "stage_passed", f"stage {stage}% passed: {verdict.reasons[0]}",
                      **details)
        return details


def promote(settings: Settings, mesh: MeshClient, redis: Any, version: str) -> dict[str, Any]:
    name = settings.xgb_registered_name
    old = registry.version_by_alias(settings, name, settings.champion_alias)
    registry.tag_version(settings, name, version, {"healmesh.rollout": "promoted",
                                                   "healmesh.previous_champion": old.version if old else ""})
    # order matters for zero errors: stable takes the new version before the canary share goes
    registry.set_alias(settings, name, settings.champion_alias, version)
    mesh.reload_xgboost()
    mesh.set_rollout(0, None, "promoted", why=f"v{version} promoted after all stages passed")
    registry.delete_alias(settings, name, settings.challenger_alias)
    slots = mesh.reload_xgboost()
    if (slots.get("stable") or {}).get("version") != version:
        raise RolloutFailed(f"after promotion the stable slot serves {slots.get('stable')}, not v{version}")
    events.record(redis, settings.key_prefix, "promoted", f"v{version} promoted to champion "
                  f"(previous: v{old.version if old else '-'})", version=version, previous=old.version if old else None)
    return {"champion": version, "previous": old.version if old else None}


def rollback(settings: Settings, mesh: MeshClient, redis: Any, version: str | None, reason: str) -> dict[str, Any]:
    """Undo a rollout: canary weight 0, challenger removed, champion untouched. Safe to repeat."""
    name = settings.xgb_registered_name
    mesh.set_rollout(0, None, "rolled_back", why=f"rollback of v{version}: {reason}", note=reason[:500])
    challenger = registry.version_by_alias(settings, name, settings.challenger_alias)
    if challenger is not None and (version is None or challenger.version == version):
        registry.delete_alias(settings, name, settings.challenger_alias)
    if version:
        registry.tag_version(settings, name, version, {"healmesh.rollout": "rolled_back",
                                                       "healmesh.rollout_reason": reason[:5000]})
    mesh.reload_xgboost()
    champion = registry.version_by_alias(settings, name, settings.champion_alias)
    events.record(redis, settings.key_prefix, "rolled_back", f"v{version} rolled back: {reason}",
                  version=version, champion=champion.version if champion else None)
    return {"rolled_back": version, "reason": reason, "champion": champion.version if champion else None}


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
