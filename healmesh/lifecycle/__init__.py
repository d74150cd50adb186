"""The model lifecycle the Airflow DAGs run: drift checks, retraining, canary rollout.

Pure policies: ``drift`` (statistics and decision), ``canary`` (stage analysis).
With I/O: ``window`` (feature log), ``reports`` (HTML/JSON/index), ``monitor`` (one drift
check), ``retrain`` (candidate, gate, registration), ``rollout`` (stages, promotion, rollback),
``mesh`` (the gateway and scorer admin APIs), ``events`` (the lifecycle event stream).
"""
