import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from healmesh import schema
from healmesh.data import generate
from healmesh.schema import Transaction

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
    assert [f["name"] for f in described] == list(schema.FEATURE_NAMES)


@pytest.mark.parametrize("cmd", ["sample", "generate", "train", "up", "down", "status", "schema"])
def test_every_subcommand_has_help(cmd):
    assert run(cmd, "--help").returncode == 0
