"""
### canary_rollout

Rolls the `challenger` out as a canary of the XGBoost scorer: its canary slot loads the
version, then stages (`HEALMESH_CANARY__STAGES`, default 10 % -> 50 % -> 100 % of the XGBoost
share), after a **shadow** stage (`HEALMESH_CANARY__SHADOW`, on by default) in which the challenger
scores mirrored live traffic that no user sees, judged also on its disagreement with the champion.
Each stage is judged sequentially (anytime-valid tests, `HEALMESH_CANARY__JUDGE__*`):
canary against stable on error rate and log latency (the gateway's metrics, across gateway
restarts) and on AUC, estimated from the served probabilities until labels arrive, then live. It
passes once no metric is worse than its margin, rolls back once harm is proven, and rolls back
when still undecided at its limit: too little evidence is never a pass.

One rollout at a time: **prepare** takes the rollout lease (Redis), every stage check extends
it and checks that the scorer's canary slot still serves the version under test; a retrain waits
for the lease before it moves `challenger`; `healmesh rollout abort --why ...` breaks it.

All stages passed: **promote** moves `champion` to the new version (retried with backoff; the old
version stays registered: `healmesh rollback`). Anything failed (preparation, a stage, or promote
after its retries): **rollback** (retried too) first puts the mesh back on the champion through
the gateway (canary 0 %, status `rolled_back`, or `failed` when the promotion failed), then
removes `challenger` and restores `champion` if a failed promotion moved it. **outcome** fails
the run unless the version was promoted.

Started by the `healmesh://challenger` asset (retrain; the event names the version) or by hand
(`version` param).
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Asset, Param, dag, task
from airflow.sdk.exceptions import AirflowFailException

from healmesh.lifecycle.airflow_tasks import CHALLENGER_ASSET, CRASH_RETRY, rollout_settings

CHALLENGER = Asset(CHALLENGER_ASSET)

CONF = rollout_settings()  # the environment only: cheap at parse time, never failing on a bad value
# exponential backoff (x2 per try, capped) for the steps that talk to MLflow at the end
RETRY = {"retry_delay": timedelta(seconds=CONF["retry_delay_s"]), "retry_exponential_backoff": 2.0,
         "max_retry_delay": timedelta(seconds=CONF["retry_max_delay_s"])}


@dag(
    dag_id="canary_rollout",
    schedule=[CHALLENGER],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=CRASH_RETRY,
    doc_md=__doc__,
    tags=["healmesh", "lifecycle"],
    params={"version": Param(None, type=["null", "string"], description="version to roll out (default: challenger)")},
)
def canary_rollout():
    @task
    def prepare(params: dict | None = None, triggering_asset_events=None, run_id=None) -> dict:
        """Take the rollout lease and load the version into the XGBoost scorer's canary slot."""
        from healmesh.lifecycle.airflow_tasks import rollout_prepare
        from healmesh.lifecycle.rollout import RolloutFailed

        try:
            return rollout_prepare(params or {}, triggering_asset_events, run_id)
        except RolloutFailed as exc:
            raise AirflowFailException(str(exc)) from exc

    def stage_task(percent: int):
        @task(task_id=f"stage_{percent}")
        def stage(prepared: dict, run_id=None) -> dict:
            """Hold the stage and analyse canary against stable; fail at the first bad check."""
            from healmesh.lifecycle.airflow_tasks import rollout_stage
            from healmesh.lifecycle.rollout import RolloutFailed

            try:
                return rollout_stage(prepared, percent, run_id)
            except RolloutFailed as exc:
                raise AirflowFailException(str(exc)) from exc

        return stage

    @task(retries=CONF["promote_retries"], **RETRY)
    def promote(prepared: dict, run_id=None, ti=None) -> dict:
        """Every stage passed: the challenger becomes the champion."""
        from healmesh.lifecycle.airflow_tasks import rollout_promote
        from healmesh.lifecycle.rollout import LeaseLost

        try:
            return rollout_promote(prepared, run_id, ti.try_number)
        except LeaseLost as exc:  # aborted: retrying cannot help
            raise AirflowFailException(str(exc)) from exc

    @task(trigger_rule="one_failed", retries=CONF["rollback_retries"], **RETRY)
    def rollback(params: dict | None = None, triggering_asset_events=None, run_id=None, ti=None) -> dict:
        """Something upstream failed: the mesh back on the champion first, then the registry."""
        from healmesh.lifecycle.airflow_tasks import rollout_rollback

        return rollout_rollback(ti.xcom_pull(task_ids="prepare"), params or {}, triggering_asset_events, run_id)

    @task(trigger_rule="all_done")
    def outcome(ti=None) -> dict:
        """Fail the run unless the version was promoted."""
        from healmesh.lifecycle.airflow_tasks import rollout_outcome
        from healmesh.lifecycle.rollout import RolloutFailed

        try:
            return rollout_outcome(ti.xcom_pull(task_ids="promote"), ti.xcom_pull(task_ids="rollback"))
        except RolloutFailed as exc:
            raise AirflowFailException(str(exc)) from exc

    @task(task_id="shadow")
    def shadow(prepared: dict, run_id=None) -> dict:
        """Mirror live traffic to the challenger (no user sees its answers) and judge it first."""
        from healmesh.lifecycle.airflow_tasks import rollout_shadow
        from healmesh.lifecycle.rollout import RolloutFailed

        try:
            return rollout_shadow(prepared, run_id)
        except RolloutFailed as exc:
            raise AirflowFailException(str(exc)) from exc

    prepared = prepare()
    mirrored = shadow(prepared)
    previous = mirrored
    stages = [mirrored]
    for percent in CONF["stages"]:
        current = stage_task(percent)(prepared)
        previous >> current
        previous = current
        stages.append(current)
    promoted = promote(prepared)
    previous >> promoted
    ended = rollback()
    [prepared, *stages, promoted] >> ended
    [promoted, ended] >> outcome()


canary_rollout()
