"""What the DAG tasks call: build the clients from settings and run one lifecycle step.

Kept out of the DAG files so that parsing a DAG imports nothing heavy and opens no
connection; each function returns plain JSON-able data (it becomes an XCom)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from healmesh.settings import Settings, get_settings

# The assets that chain the DAGs: drift_monitor -> retrain -> canary_rollout.
# Every task of the three DAGs: a task whose worker died (the scheduler fails it once its heartbeat
# stops: HEALMESH_CLUSTER__TASK_HEARTBEAT_TIMEOUT_S in the rehearsal) runs again on another worker.
# Each is safe to repeat; a judged failure raises AirflowFailException, which is never retried.
CRASH_RETRY: dict[str, Any] = {"retries": 1, "retry_delay": timedelta(seconds=10)}

DRIFT_ASSET = "healmesh://drift"
CHALLENGER_ASSET = "healmesh://challenger"


def redis_client() -> Any:
    """A sync Redis client for the control plane and the feature log (what every task uses)."""
    from healmesh import redis_conn

    return redis_conn.sync_client(get_settings())


def mesh_client() -> Any:
    """A client of the gateway and scorer admin APIs, with the admin token."""
    from healmesh.credentials import admin_token
    from healmesh.lifecycle.mesh import MeshClient

    settings = get_settings()
    return MeshClient(settings, admin_token(settings))


def drift_check(params: dict[str, Any]) -> dict[str, Any]:
    from healmesh.lifecycle.monitor import run_drift_check

    return run_drift_check(get_settings(), redis_client(), window_records=params.get("window_records"),
                           window_minutes=params.get("window_minutes"))


def retrain(params: dict[str, Any], triggering_events: dict[Any, Any] | None) -> dict[str, Any]:
    from healmesh.lifecycle.report_ids import check_report_id
    from healmesh.lifecycle.retrain import run_retrain

    check_id = params.get("drift_check_id")
    trigger = "manual"
    for asset_events in (triggering_events or {}).values():
        for event in asset_events:
            check_id = check_id or (event.extra or {}).get("check_id")
            trigger = "drift"
    if check_id is not None:  # an asset event's extra bypasses the Param's pattern
        check_report_id(check_id)
    return run_retrain(get_settings(), redis_client(), trigger=params.get("trigger") or trigger,
                       drift_check_id=check_id, window_records=params.get("window_records"),
                       seed=int(params.get("seed") or 0))


def offer_challenger(result: dict[str, Any], run_id: str) -> dict[str, Any]:
    """One poke of the retrain DAG's sensor: the candidate becomes the challenger once no rollout
    holds the lease."""
    import time

    from healmesh.lifecycle.retrain import offer_challenger as offer

    now = time.time()
    return offer(get_settings(), redis_client(), result["version"], holder=f"retrain/{run_id}",
                 waited_s=now - float(result.get("registered_at") or now), now=now)


def rollout_holder(run_id: str) -> str:
    """Every task of one canary_rollout run acts as this lease holder."""
    return f"canary_rollout/{run_id}"


def _announced_version(triggering_events: dict[Any, Any] | None) -> str | None:
    version = None
    for asset_events in (triggering_events or {}).values():
        for event in asset_events:
            version = (event.extra or {}).get("version") or version
    return str(version) if version is not None else None


def rollout_prepare(params: dict[str, Any], triggering_events: dict[Any, Any] | None, run_id: str) -> dict[str, Any]:
    from healmesh.lifecycle.rollout import prepare

    return prepare(get_settings(), mesh_client(), redis_client(), holder=rollout_holder(run_id),
                   version=params.get("version"), event_version=_announced_version(triggering_events))


def rollout_shadow(prepared: dict[str, Any], run_id: str) -> dict[str, Any]:
    from healmesh.lifecycle.rollout import run_shadow

    return run_shadow(get_settings(), mesh_client(), redis_client(), prepared["version"], holder=rollout_holder(run_id))


def rollout_stage(prepared: dict[str, Any], stage: int, run_id: str) -> dict[str, Any]:
    from healmesh.lifecycle.rollout import run_stage

    return run_stage(get_settings(), mesh_client(), redis_client(), prepared["version"], stage,
                     holder=rollout_holder(run_id))


def rollout_promote(prepared: dict[str, Any], run_id: str, attempt: int) -> dict[str, Any]:
    from healmesh.lifecycle.rollout import LeaseLost, promote, record_promote_failure

    settings, redis, holder = get_settings(), redis_client(), rollout_holder(run_id)
    try:
        return promote(settings, mesh_client(), redis, prepared["version"], holder=holder,
                       previous=prepared.get("champion"))
    except LeaseLost:
        raise
    except Exception as exc:  # recorded for the rollback's reason, then retried by Airflow
        record_promote_failure(settings, redis, prepared["version"], holder, attempt, exc)
        raise


def rollout_rollback(prepared: dict[str, Any] | None, params: dict[str, Any],
                     triggering_events: dict[Any, Any] | None, run_id: str) -> dict[str, Any]:
    """End a rollout that did not promote, as ``policies.rollout.rollback_plan`` decides from this
    run's events: rolled back (with the failed stage's reason), failed (promotion), or left alone."""
    from healmesh.control import events
    from healmesh.control.lease import LeaseStore
    from healmesh.lifecycle.rollout import rollback
    from healmesh.policies.rollout import rollback_plan

    settings, redis, holder = get_settings(), redis_client(), rollout_holder(run_id)
    version = (prepared or {}).get("version") or params.get("version") or _announced_version(triggering_events)
    plan = rollback_plan(holder, LeaseStore(redis, settings.key_prefix).current(),
                         events.for_rollout(redis, settings.key_prefix, holder))
    status = plan.action.status
    if status is None:  # RollbackAction.LEAVE: the mesh belongs to the rollout holding the lease
        events.record(redis, settings.key_prefix, "rollout_refused", f"v{version} not rolled out: {plan.reason}",
                      version=version, rollout=holder)
        return {"rolled_back": None, "status": None, "reason": plan.reason}
    return rollback(settings, mesh_client(), redis, version, plan.reason, status=status, holder=holder,
                    previous_champion=(prepared or {}).get("champion"))


def rollout_outcome(promoted: dict[str, Any] | None, ended: dict[str, Any] | None) -> dict[str, Any]:
    """The run's verdict (its last task): a rollout that did not promote fails the run, whatever the
    rollback did, so the run's state says what happened to the version."""
    from healmesh.lifecycle.rollout import RolloutFailed

    if promoted:
        return promoted
    if ended:
        raise RolloutFailed(f"not promoted ({ended.get('status') or 'left alone'}): {ended.get('reason')}")
    raise RolloutFailed("not promoted, and the rollback did not finish: see the rollback task's log")


def parse_time_settings() -> Settings:
    """Settings for a DAG file being parsed (they read the environment only: no I/O). A parse must
    never fail on configuration, so a bad value falls back to the defaults here; the tasks, which
    call get_settings(), fail on it with the field named."""
    try:
        return get_settings()
    except ValueError:  # pydantic's ValidationError
        return Settings.model_construct()


def drift_schedule() -> str:
    return parse_time_settings().drift_schedule


def rollout_settings() -> dict[str, Any]:
    """What the canary DAG needs at parse time."""
    s = parse_time_settings()
    return {"stages": s.canary.stages, "promote_retries": s.rollout.promote_retries,
            "rollback_retries": s.rollout.rollback_retries, "retry_delay_s": s.rollout.retry_delay_s,
            "retry_max_delay_s": s.rollout.retry_max_delay_s}


def challenger_wait_settings() -> dict[str, float]:
    s = parse_time_settings()
    return {"wait_s": s.challenger_wait_s, "poke_s": s.challenger_poke_s}


def canary_stages() -> tuple[int, ...]:
    return get_settings().canary.stages
