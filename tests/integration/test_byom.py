"""A data file no test has seen, from `healmesh init` to answers (issue 22, "Done when"): a CSV
written here with random feature names (one not an identifier), a numeric, an integer and a
categorical column, a random yes/no label; `init` drafts the project, `up --no-airflow` trains on
it and serves it, `replay` posts its later rows with their labels; the gateway refuses a row that
breaks the drafted contract, naming the field."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import numpy as np
import pytest

from healmesh import project
from healmesh.ops import procs

pytestmark = pytest.mark.integration


def _csv(path, rng, n: int, names: list[str]) -> None:
    a, b, c = rng.normal(0, 1, n), rng.integers(0, 30, n), rng.choice(["p", "q", "r"], n)
    logit = 1.5 * a + 0.1 * (b - 15) + np.where(c == "r", 1.0, 0.0) - 0.3
    y = np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "yes", "no")
    lines = [",".join([*names, "Target"])] + [f"{a[i]:.4f},{b[i]},{c[i]},{y[i]}" for i in range(n)]
    path.write_text("\n".join(lines) + "\n")


def test_init_up_and_replay_on_a_file_no_test_has_seen(tmp_path):
    rng = np.random.default_rng()
    names = [f"Reading {rng.integers(100, 999)}", f"count_{rng.integers(10, 99)}", f"kind_{rng.integers(10, 99)}"]
    _csv(tmp_path / "train.csv", rng, 3_000, names)
    _csv(tmp_path / "later.csv", rng, 400, names)
    home = tmp_path / "home"
    ports = {k: procs.free_port() for k in ("redis", "mlflow", "gateway", "xgb", "torch", "fallback", "prometheus",
                                            "alertmanager")}
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALMESH_") and k != "MLFLOW_TRACKING_URI"}
    # its own BentoML store: its training must not replace the session's built-in models
    env.update({"HEALMESH_HOME": str(home), "BENTOML_HOME": str(tmp_path / "bentoml"),
                **{f"HEALMESH_{k.upper()}_PORT": str(v) for k, v in ports.items()}})

    def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "healmesh.ops.cli", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=timeout)

    drafted = cli("init", "--data", "train.csv", "--label", "Target", "--out", "mine.yaml")
    assert drafted.returncode == 0, drafted.stderr
    p = project.load(tmp_path / "mine.yaml")
    kinds = {f.source: f.type.value for f in p.features}
    assert kinds == {names[0]: "numeric", names[1]: "integer", names[2]: "categorical"}, kinds
    assert p.label.positive == "yes" and not p.fallback.rules
    env["HEALMESH_PROJECT"] = str(tmp_path / "mine.yaml")
    try:
        up = cli("up", "--no-airflow", timeout=900)
        assert up.returncode == 0, "stderr:\n" + up.stderr[-4000:] + "\nstdout:\n" + up.stdout[-2000:]
        assert "(rules: distilled)" in up.stdout
        replayed = cli("replay", "--data", "later.csv", "--labels-after", "1", "--json", "--no-progress")
        summary = json.loads(replayed.stdout.strip().splitlines()[-1])
        assert replayed.returncode == 0 and summary["answered"] == 400 and summary["labels_accepted"] == 400, (
            replayed.stderr, summary)
        assert summary["auc"] is not None and summary["auc"] > 0.7, summary  # the label is learnable
        gateway = f"http://127.0.0.1:{ports['gateway']}"
        numeric = p.features[0].name
        row = {f.name: (f.categories[0] if f.categories else (f.min or 0)) for f in p.features}
        assert httpx.post(gateway + "/api/v1/predict", json=row).status_code == 200
        refused = httpx.post(gateway + "/api/v1/predict", json={**row, numeric: "a lot"})
        assert refused.status_code == 422 and numeric in refused.text
    finally:
        cli("down", timeout=180)
