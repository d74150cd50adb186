"""
### drift_monitor

Compares the recent window of live traffic (the gateway's feature log in Redis) with the
champion's reference sample (an artifact of its MLflow run): per-feature KS, PSI,
chi-square / Jensen-Shannon, plus Evidently's data-drift report, and the champion's live AUC
where labels arrived. Stores the report and a JSON summary as an MLflow run of the drift
experiment (`<UTC time>_v<version>`), lists it in the control state (the gateway's
`/ui/reports/` serves it from there) and mirrors it into `drift_reports/` when it can; publishes
the scores (the gateway exports them as `healmesh_drift_score`). The decision
(`policies.drift_alarm.decide`): a feature drifts when
significant after a false-discovery-rate correction over all features and above an effect floor;
a drift on features the champion barely uses is `drift_reported`; a window dominated by a few
distinct rows is `anomalous_traffic`; a live-AUC drop is drift. A window too small for a decision
is recorded as such. The report's top shows the decision and its reasons.

Only `drift` emits the `healmesh://drift` asset, which starts **retrain**.

Params: `window_records` (last N records), `window_minutes` (or the last T minutes).
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Asset, Param, dag, task

from healmesh.lifecycle.airflow_tasks import CRASH_RETRY, DRIFT_ASSET, drift_schedule

DRIFT = Asset(DRIFT_ASSET)

SCHEDULE = drift_schedule()  # the environment only: cheap at parse time, never failing on a bad value


@dag(
    dag_id="drift_monitor",
    schedule=SCHEDULE,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=CRASH_RETRY,
    doc_md=__doc__,
    tags=["healmesh", "lifecycle"],
    params={
        "window_records": Param(None, type=["null", "integer"], minimum=10, description="last N records"),
        "window_minutes": Param(None, type=["null", "number"], exclusiveMinimum=0, description="or the last T minutes"),
    },
)
def drift_monitor():
    @task
    def check(params: dict | None = None) -> dict:
        """Run one drift check and write its report."""
        from healmesh.lifecycle.airflow_tasks import drift_check

        return drift_check(params or {})

    @task.short_circuit
    def drifted(result: dict) -> bool:
        """Only drift goes on to retraining."""
        from healmesh.policies.drift_decision import DriftDecision

        return result["decision"] == DriftDecision.DRIFT

    @task(outlets=[DRIFT])
    def request_retraining(result: dict, outlet_events=None) -> dict:
        """Emit the drift asset (with the check id) that schedules the retrain DAG."""
        outlet_events[DRIFT].extra = {"check_id": result["check_id"], "drifted": result["drifted_features"][:10]}
        return result

    result = check()
    drifted(result) >> request_retraining(result)


drift_monitor()
