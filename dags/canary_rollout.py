"""
### canary_rollout

Rolls the `challenger` out as a canary of the XGBoost scorer: its canary slot loads the
version, then stages (`HEALMESH_CANARY_STAGES`, default 10 % -> 50 % -> 100 % of the XGBoost
share). Each stage holds for the analysis interval, needs a minimum number of canary calls,
and compares canary with stable on error rate and p95 latency (the gateway's metrics) and,
where enough labels exist, live AUC. Any failed check fails the stage at once, and a stage
with too little data by its deadline fails too: **rollback** then sets the canary weight to
0, removes `challenger` and leaves the champion untouched. All stages passed: **promote**
moves `champion` to the new version (the old one stays registered: `healmesh rollback`).

Started by the `healmesh://challenger` asset (retrain) or by hand (`version` param).
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Asset, Param, dag, task
from airflow.sdk.exceptions import AirflowFailException

from healmesh.lifecycle.airflow_tasks import CHALLENGER_ASSET

CHALLENGER = Asset(CHALLENGER_ASSET)

try:  # the stages are configuration (environment only): cheap at parse time
    from healmesh.lifecycle.airflow_tasks import canary_stages

    STAGES = canary_stages()
except Exception:  # noqa: BLE001 - a parse must never fail on configuration
    STAGES = (10, 50, 100)


@dag(
    dag_id="canary_rollout",
    schedule=[CHALLENGER],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["healmesh", "lifecycle"],
    params={"version": Param(None, type=["null", "string"], description="version to roll out (default: challenger)")},
)
def canary_rollout():
    @task
    def prepare(params: dict | None = None) -> str:
        """Load the challenger into the XGBoost scorer's canary slot."""
        from healmesh.lifecycle.airflow_tasks import rollout_prepare
        from healmesh.lifecycle.rollout import RolloutFailed

        try:
            return rollout_prepare(params or {})["version"]
        except RolloutFailed as exc:
            raise AirflowFailException(str(exc)) from exc

    def stage_task(percent: int):
        @task(task_id=f"stage_{percent}")
        def stage(version: str) -> dict:
            """Hold the stage and analyse canary against stable; fail at the first bad check."""
            from healmesh.lifecycle.airflow_tasks import rollout_stage
            from healmesh.lifecycle.rollout import RolloutFailed

            try:
                return rollout_stage(version, percent)
            except RolloutFailed as exc:
                raise AirflowFailException(str(exc)) from exc

        return stage

    @task
    def promote(version: str) -> dict:
        """Every stage passed: the challenger becomes the champion."""
        from healmesh.lifecycle.airflow_tasks import rollout_promote

        return rollout_promote(version)

    @task(trigger_rule="one_failed")
    def rollback(params: dict | None = None, ti=None) -> dict:
        """A stage (or the preparation) failed: canary to 0 %, challenger removed, champion untouched."""
        from healmesh.lifecycle.airflow_tasks import rollout_rollback

        return rollout_rollback(ti.xcom_pull(task_ids="prepare") or (params or {}).get("version"))

    version = prepare()
    previous = version
    stages = []
    for percent in STAGES:
        current = stage_task(percent)(version)
        previous >> current
        previous = current
        stages.append(current)
    previous >> promote(version)
    [version, *stages] >> rollback()


canary_rollout()
