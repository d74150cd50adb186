"""The model lifecycle the Airflow DAGs run: drift checks, retraining, canary rollout.

Pure policies: ``drift`` (statistics and decision), ``canary`` (stage analysis), ``evidence``
(counter deltas across gateway restarts), ``rollout_policy`` (stage guard, challenger step,
rollback plan), ``report_ids`` (what a report name may be).
With I/O: ``window`` (feature log), ``reports`` (HTML/JSON/index), ``monitor`` (one drift
check), ``retrain`` (candidate, gate, registration), ``rollout`` (stages, promotion, rollback),
``lease`` (one rollout at a time), ``mesh`` (the gateway and scorer admin APIs), ``events``
(the lifecycle event stream).
"""
