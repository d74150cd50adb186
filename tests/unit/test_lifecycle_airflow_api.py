"""Tests healmesh.lifecycle.airflow_api: the task progress line."""

def test_task_progress_counts_finished_tasks_and_names_running_and_failed_ones():
    from healmesh.lifecycle.airflow_api import task_progress

    line = task_progress({"a": "success", "b": "skipped", "c": "running", "d": None, "e": "failed",
                          "f": "upstream_failed"})
    assert line == "4/6 tasks done; running: c; failed: e"
    assert task_progress({"a": "queued"}) == "0/1 tasks done"
