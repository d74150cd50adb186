"""The model lifecycle the Airflow DAGs run: drift checks, retraining, canary rollout: the I/O
around the pure policies in ``healmesh.policies`` (``drift``, ``canary``, ``evidence``,
``rollout``, ``gate``) and the control plane in ``healmesh.control`` (events, lease, state).

Pure here: ``report_ids`` (what a report name may be). With I/O: ``window`` (feature log),
``reports`` (HTML/JSON/index), ``monitor`` (one drift check), ``retrain`` (candidate, gate,
registration), ``rollout`` (stages, promotion, rollback), ``mesh`` (the gateway and scorer
admin APIs), ``airflow_tasks`` (what the DAG tasks call).
"""
