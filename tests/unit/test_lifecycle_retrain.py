"""Tests healmesh.lifecycle.retrain: a bad drift check id is refused before anything is touched."""

import pytest

from healmesh.settings import Settings


def test_retrain_refuses_a_path_before_touching_anything(tmp_path):
    from types import SimpleNamespace

    from healmesh.lifecycle import airflow_tasks
    from healmesh.lifecycle.report_ids import BadReportId
    from healmesh.lifecycle.retrain import run_retrain

    # no registry, no Redis: the check must come before either is used
    s = Settings(mlflow_tracking_uri="http://127.0.0.1:9/", drift_reports_dir=tmp_path)
    with pytest.raises(BadReportId, match="drift_check_id .*'../../etc/passwd'"):
        run_retrain(s, None, trigger="manual", drift_check_id="../../etc/passwd")
    # an asset event's extra does not go through the DAG Param's pattern
    event = SimpleNamespace(extra={"check_id": "../secrets/admin_token"})
    with pytest.raises(BadReportId, match="drift_check_id"):
        airflow_tasks.retrain({}, {"healmesh://drift": [event]})
