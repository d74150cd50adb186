"""
### retrain

Builds a training set from recent logged traffic joined with its feedback labels, plus a
share of the champion's reference data; trains an XGBoost candidate; scores candidate and
champion on the same recent labelled holdout. Logs params, metrics, the model (signature,
input example), the drift report, a new reference sample and lineage tags (trigger, drift
check, data window) to MLflow, with the gate's interval. Only a candidate that passes the gate
(DeLong's paired test: not worse than the champion by more than `HEALMESH_RETRAIN__GATE__MARGIN`,
above `HEALMESH_RETRAIN__GATE__FLOOR`, on enough positives) is registered; "insufficient evidence"
keeps the champion.

A registered candidate becomes the `challenger` only while no canary rollout is running (the
rollout lease is free): **install_challenger** waits for it, checking every
`HEALMESH_CHALLENGER_POKE_S`, up to `HEALMESH_CHALLENGER_WAIT_S`; after that the version stays
registered without the alias and the run fails saying so. Installed, it emits the
`healmesh://challenger` asset (with the version), which starts **canary_rollout**.
A rejection is recorded with its reason. Too few labels fail the run with a clear message.

Started by the `healmesh://drift` asset (drift_monitor) or by hand; `drift_check_id` must be
a drift report name (`20260101T120000Z_v3`).
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Asset, Param, PokeReturnValue, dag, task
from airflow.sdk.exceptions import AirflowFailException

from healmesh.lifecycle.airflow_tasks import CHALLENGER_ASSET, CRASH_RETRY, DRIFT_ASSET, challenger_wait_settings
from healmesh.lifecycle.report_ids import REPORT_ID_PATTERN

DRIFT = Asset(DRIFT_ASSET)
CHALLENGER = Asset(CHALLENGER_ASSET)

WAIT = challenger_wait_settings()  # the environment only: cheap at parse time, never failing on a bad value


@dag(
    dag_id="retrain",
    schedule=[DRIFT],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=CRASH_RETRY,
    doc_md=__doc__,
    tags=["healmesh", "lifecycle"],
    params={
        "drift_check_id": Param(None, type=["null", "string"], pattern=REPORT_ID_PATTERN,
                                description="drift report this retrain answers (a report name)"),
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
        from healmesh.lifecycle.report_ids import BadReportId

        try:
            return run(params or {}, triggering_asset_events)
        except BadReportId as exc:  # not worth a retry
            raise AirflowFailException(str(exc)) from exc

    @task.short_circuit
    def passed(result: dict) -> bool:
        return bool(result["passed"])

    # our own limit (challenger_wait_s) ends the wait first, with an event; Airflow's is a backstop
    @task.sensor(mode="poke", poke_interval=WAIT["poke_s"], timeout=WAIT["wait_s"] + 10 * WAIT["poke_s"] + 60)
    def install_challenger(result: dict, run_id=None) -> PokeReturnValue:
        """Make the candidate the challenger as soon as no rollout holds the lease."""
        from healmesh.lifecycle.airflow_tasks import offer_challenger
        from healmesh.lifecycle.retrain import ChallengerWaitTimedOut

        try:
            offered = offer_challenger(result, run_id)
        except ChallengerWaitTimedOut as exc:
            raise AirflowFailException(str(exc)) from exc
        return PokeReturnValue(is_done=offered["installed"], xcom_value=offered)

    @task(outlets=[CHALLENGER])
    def announce_challenger(result: dict, installed: dict, outlet_events=None) -> dict:
        """Emit the challenger asset (with the version) that schedules the canary rollout."""
        outlet_events[CHALLENGER].extra = {"version": result["version"], "run_id": result["run_id"]}
        return {**result, "challenger": installed}

    result = train_and_judge()
    installed = install_challenger(result)
    passed(result) >> installed
    announce_challenger(result, installed)


retrain()
