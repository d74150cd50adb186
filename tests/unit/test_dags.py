"""The three lifecycle DAGs parse (no services, no Airflow database), stay thin and documented.
Parsed in a fresh interpreter, as the DAG processor does: what parsing imports is what it costs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PARSE = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder="dags")
heavy = [m for m in ("torch", "xgboost", "mlflow", "evidently", "redis", "bentoml") if m in sys.modules]
print(json.dumps({"errors": {k: str(v) for k, v in bag.import_errors.items()}, "heavy": heavy, "dags": {
    d.dag_id: {"tasks": [t.task_id for t in d.tasks], "retries": {t.task_id: t.retries for t in d.tasks},
               "timetable": type(d.timetable).__name__,
               "doc": len(d.doc_md or ""), "params": d.params is not None} for d in bag.dags.values()}}))
"""


def test_the_three_dags_parse_thin_and_documented():
    done = subprocess.run([sys.executable, "-c", PARSE], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    parsed = json.loads(done.stdout.strip().splitlines()[-1])
    assert parsed["errors"] == {} and parsed["heavy"] == [], parsed
    dags = parsed["dags"]
    assert set(dags) == {"drift_monitor", "retrain", "canary_rollout"}
    assert all(d["doc"] > 200 and d["params"] for d in dags.values()), dags
    assert "Asset" in dags["retrain"]["timetable"] and "Asset" in dags["canary_rollout"]["timetable"]
    tasks = dags["canary_rollout"]["tasks"]
    assert tasks[:5] == ["prepare", "shadow", "stage_10", "stage_50", "stage_100"]
    assert {"promote", "rollback"} <= set(tasks)


def test_every_task_runs_again_when_its_worker_dies():
    """A Celery worker killed mid-task fails the task (its heartbeat stops); one retry on another
    worker keeps the loop going (the cluster rehearsal kills one)."""
    done = subprocess.run([sys.executable, "-c", PARSE], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    dags = json.loads(done.stdout.strip().splitlines()[-1])["dags"]
    once = {f"{dag}.{task}": n for dag, d in dags.items() for task, n in d["retries"].items() if n < 1}
    assert not once, f"tasks a dead worker would fail for good: {once}"
