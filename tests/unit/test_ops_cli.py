"""Tests healmesh.ops.cli: the `healmesh` command run as a subprocess (sample, generate, schema, help, errors)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from healmesh import schema
from healmesh.data import generate
from healmesh.urls import local_redis_url

Transaction = schema.active().transaction

HEALMESH = shutil.which("healmesh", path=str(Path(sys.executable).parent)) or "healmesh"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([HEALMESH, *args], capture_output=True, text=True, timeout=120)


def test_sample_prints_valid_transactions_one_per_line():
    done = run("sample", "--n", "25", "--seed", "3")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 25
    for line in lines:
        Transaction(**json.loads(line))  # valid as a request body
    again = run("sample", "--n", "25", "--seed", "3").stdout
    assert again == done.stdout


def test_sample_with_drift_and_labels():
    base = [json.loads(x) for x in run("sample", "--n", "400", "--seed", "1").stdout.splitlines()]
    shifted = [json.loads(x) for x in run("sample", "--n", "400", "--seed", "1", "--shift", "amount=1.0",
                                          "--with-label").stdout.splitlines()]
    assert all(s["is_fraud"] in (0, 1) for s in shifted)
    assert sum(s["amount"] for s in shifted) > 2 * sum(b["amount"] for b in base)


def test_bad_arguments_and_bad_files_get_clear_errors(tmp_path):
    bad = run("sample", "--n", "5", "--shift", "amout=1")
    assert bad.returncode == 2 and "unknown feature 'amout'" in bad.stderr
    df = generate(300, seed=2)
    df.loc[17, "merchant_category"] = "spaceport"
    path = tmp_path / "mine.csv"
    df.to_csv(path, index=False)
    done = run("train", "--data", str(path), "--no-register")
    assert done.returncode == 2
    assert "column 'merchant_category', row 17" in done.stderr


def test_generate_and_schema(tmp_path):
    out = tmp_path / "d.parquet"
    assert run("generate", "--n", "1000", "--out", str(out)).returncode == 0
    import pandas as pd

    assert len(pd.read_parquet(out)) == 1000
    described = json.loads(run("schema", "--json").stdout)
    assert [f["name"] for f in described] == list(schema.active().feature_names)


@pytest.mark.parametrize("cmd", ["sample", "generate", "train", "import-model", "init", "replay", "up", "down",
                                 "status", "schema"])
def test_every_subcommand_has_help(cmd):
    assert run(cmd, "--help").returncode == 0


@pytest.mark.parametrize("args", [("demo", "drift", "--n", "10"), ("demo", "--steady", "1"),
                                  ("rollout", "abort", "--why", "test")])
def test_a_command_that_needs_the_mesh_says_in_one_line_that_it_is_not_up(args, tmp_path):
    """No mesh on any port these commands would use (free ports, an empty home): one line that
    names the part that did not answer and the command that starts it, no traceback."""
    import os

    from healmesh.ops.procs import ensure_airflow_passwords, free_port

    ensure_airflow_passwords(tmp_path / "airflow")  # as after a `make up`: the commands go on to call the mesh
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HEALMESH_", "MLFLOW_"))}
    env.update({"HEALMESH_HOME": str(tmp_path), "HEALMESH_REDIS_URL": local_redis_url(free_port()),
                **{f"HEALMESH_{n}_PORT": str(free_port()) for n in ("GATEWAY", "XGB", "TORCH", "FALLBACK", "AIRFLOW",
                                                                    "MLFLOW")}})
    done = subprocess.run([HEALMESH, *args], capture_output=True, text=True, timeout=120, env=env)
    err = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in done.stderr and len(err) == 1, done.stderr[-3000:]
    assert "make up" in err[0] and any(part in err[0] for part in ("gateway", "Airflow", "Redis", "MLflow")), err[0]
