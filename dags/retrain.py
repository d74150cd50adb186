"""
### retrain

Builds a training set from recent logged traffic joined with its feedback labels, plus a
share of the champion's reference data; trains an XGBoost candidate; scores candidate and
champion on the same recent labelled holdout. Logs params, metrics, the model (signature,
input example), the drift report, a new reference sample and lineage tags (trigger, drift
check, data window) to MLflow. Only a candidate that passes the gate (ROC AUC not worse than
the champion's, within `HEALMESH_GATE_TOLERANCE`) is registered and gets the `challenger`
alias; that emits the `healmesh://challenger` asset, which starts **canary_rollout**.
A rejection is recorded with its reason. Too few labels fail the run with a clear message.

Started by the `healmesh://drift` asset (drift_monitor) or by hand.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Asset, Param, dag, task

from healmesh.lifecycle.airflow_tasks import CHALLENGER_ASSET, DRIFT_ASSET

DRIFT = Asset(DRIFT_ASSET)
CHALLENGER = Asset(CHALLENGER_ASSET)


@dag(
    dag_id="retrain",
    schedule=[DRIFT],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["healmesh", "lifecycle"],
    params={
        "drift_check_id": Param(None, type=["null", "string"], description="drift report this retrain answers"),
        "window_records": Param(None, type=["null", "integer"], minimum=100, description="recent records to read"),
        "seed": Param(0, type="integer"),
        "trigger": Param(None, type=["null", "string"], description="recorded as the run's trigger"),
    },
)
def retrain():
    @task
    def train_and_judge(params: dict | None = None, triggering_asset_events=None) -> dict:
        """Train a candidate, compare it with the champion, register it only if it passes."""
        from healmesh.lifecycle.airflow_tasks import retrain as run

        return run(params or {}, triggering_asset_events)

    @task.short_circuit
    def passed(result: dict) -> bool:
        return bool(result["passed"])

    @task(outlets=[CHALLENGER])
    def announce_challenger(result: dict, outlet_events=None) -> dict:
        """Emit the challenger asset that schedules the canary rollout."""
        outlet_events[CHALLENGER].extra = {"version": result["version"], "run_id": result["run_id"]}
        return result

    result = train_and_judge()
    passed(result) >> announce_challenger(result)


retrain()
