"""A `healmesh up` that stops partway leaves nothing running, and says why (issue 27): here the
project's data passes the schema but cannot be trained on (one class only), which is found only
after Redis and MLflow are up. Before, the supervisor kept those two running, and a second `up`
took the mesh for up, started nothing more and exited 0 with the scorers and the gateway stopped."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from healmesh.ops import procs
from healmesh.ops.supervisor.client import Supervisor

from .conftest import ROOT

pytestmark = pytest.mark.integration


def test_an_up_that_fails_in_training_stops_what_it_started(tmp_path):
    (tmp_path / "data.csv").write_text("x,y\n" + "".join(f"{i / 100},no\n" for i in range(200)))
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({
        "name": "one-class", "features": [{"name": "x", "type": "numeric", "min": 0, "max": 5}],
        "label": {"column": "y", "positive": "yes", "negative": "no"}, "data": {"path": "data.csv"}}))
    home = tmp_path / "home"
    ports = {k: procs.free_port() for k in ("redis", "mlflow", "gateway", "xgb", "torch", "fallback")}
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALMESH_") and k != "MLFLOW_TRACKING_URI"}
    env.update({"HEALMESH_HOME": str(home), "HEALMESH_PROJECT": str(tmp_path / "p.yaml"),
                "BENTOML_HOME": str(tmp_path / "bentoml"),
                **{f"HEALMESH_{k.upper()}_PORT": str(v) for k, v in ports.items()}})
    done = subprocess.run([sys.executable, "-m", "healmesh.ops.cli", "up", "--no-airflow"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    try:
        assert done.returncode == 1, done.stderr[-3000:]
        assert "training failed" in done.stderr and "needs both classes of 'y'" in done.stderr, done.stderr[-3000:]
        assert "stopping what this up started" in done.stderr
        assert Supervisor(home / "run").pid() is None
        assert not procs.port_open(ports["redis"]) and not procs.port_open(ports["mlflow"])
    finally:
        subprocess.run([sys.executable, "-m", "healmesh.ops.cli", "down"], cwd=ROOT, env=env, capture_output=True,
                       timeout=120)
