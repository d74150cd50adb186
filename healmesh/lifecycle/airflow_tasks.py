"""What the DAG tasks call: build the clients from settings and run one lifecycle step.

Kept out of the DAG files so that parsing a DAG imports nothing heavy and opens no
connection; each function returns plain JSON-able data (it becomes an XCom)."""

from __future__ import annotations

from typing import Any

from healmesh.settings import get_settings

# The assets that chain the DAGs: drift_monitor -> retrain -> canary_rollout.
DRIFT_ASSET = "healmesh://drift"
CHALLENGER_ASSET = "healmesh://challenger"


def _redis() -> Any:
    from healmesh import redis_conn

    return redis_conn.sync_client(get_settings())


def _mesh() -> Any:
    from healmesh.credentials import admin_token
    from healmesh.lifecycle.mesh import MeshClient

    settings = get_settings()
    return MeshClient(settings, admin_token(settings))


def drift_check(params: dict[str, Any]) -> dict[str, Any]:
    from healmesh.lifecycle.monitor import run_drift_check

    return run_drift_check(get_settings(), _redis(), window_records=params.get("window_records"),
                           window_minutes=params.get("window_minutes"))


def retrain(params: dict[str, Any], triggering_events: dict[Any, Any] | None) -> dict[str, Any]:
    from healmesh.lifecycle.retrain import run_retrain

    check_id = params.get("drift_check_id")
    trigger = "manual"
    for asset_events in (triggering_events or {}).values():
        for event in asset_events:
            check_id = check_id or (event.extra or {}).get("check_id")
            trigger = "drift"
    return run_retrain(get_settings(), _redis(), trigger=params.get("trigger") or trigger, drift_check_id=check_id,
                       window_records=params.get("window_records"), seed=int(params.get("seed") or 0))


def rollout_prepare(params: dict[str, Any]) -> dict[str, Any]:
    from healmesh.lifecycle.rollout import prepare

    return prepare(get_settings(), _mesh(), _redis(), params.get("version"))


def rollout_stage(version: str, stage: int) -> dict[str, Any]:
    from healmesh.lifecycle.rollout import run_stage

    return run_stage(get_settings(), _mesh(), _redis(), version, stage)


def rollout_promote(version: str) -> dict[str, Any]:
    from healmesh.lifecycle.rollout import promote

    return promote(get_settings(), _mesh(), _redis(), version)


def rollout_rollback(version: str | None) -> dict[str, Any]:
    """Roll back, giving the reason the failed stage recorded (or that preparation failed)."""
    from healmesh.lifecycle import events
    from healmesh.lifecycle.rollout import rollback

    settings, redis = get_settings(), _redis()
    failed = [e for e in events.recent(redis, settings.key_prefix, 20)
              if e["kind"] == "stage_failed" and e["data"].get("version") == version]
    reason = failed[0]["message"] if failed else "the rollout could not start (see the prepare task)"
    return rollback(settings, _mesh(), redis, version, reason)


def canary_stages() -> tuple[int, ...]:
    return tuple(get_settings().canary_stages)
