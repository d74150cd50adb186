"""Tests healmesh.project: the project file's validation, each fault a ProjectError naming the
field; its drift and gate overrides (checked by settings.check_project_overrides) and their
precedence (environment over file over defaults); and `healmesh up` stopping on a bad file or
bad data with the field named, before it creates anything."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from healmesh import project
from healmesh.ops import procs
from healmesh.policies.gate import GateConfig
from healmesh.project import ProjectError
from healmesh.settings import Settings, check_project_overrides, get_settings

ROOT = Path(__file__).resolve().parents[2]
FILE = Path("/projects/demo/healmesh.yaml")

VALID: dict[str, Any] = {
    "name": "demo",
    "features": [
        {"name": "size", "type": "numeric", "min": 0.0, "max": 10.0},
        {"name": "count", "type": "integer", "min": 0, "max": 5},
        {"name": "colour", "type": "categorical", "categories": ["red", "blue"]},
    ],
    "label": {"column": "target"},
    "entity_key": "who",
    "data": {"path": "data.csv"},
    "fallback": {"rules": [{"name": "big", "when": [{"feature": "size", "op": ">", "value": 5}], "weight": 1.0}]},
}


def changed(edit: Callable[[dict[str, Any]], object]) -> dict[str, Any]:
    raw = copy.deepcopy(VALID)
    edit(raw)
    return raw


def condition(raw: dict[str, Any], **cond: Any) -> None:
    raw["fallback"]["rules"][0]["when"] = [cond]


def test_the_valid_file_parses():
    p = project.parse(copy.deepcopy(VALID), path=FILE)
    assert p.feature_names == ("size", "count", "colour")
    assert p.base_dir == FILE.parent and p.resolve("data.csv") == str(FILE.parent / "data.csv")
    check_project_overrides(p)


def test_a_file_that_is_not_a_mapping():
    for raw in ([VALID], "name: demo", None):
        with pytest.raises(ProjectError, match="must hold a mapping") as e:
            project.parse(raw, path=FILE)
        assert str(e.value).startswith(f"{FILE}: ")


# (case, the edit, what the message must say: the field's location and the reason)
FAULTS = [
    ("feature name with a space", lambda r: r["features"][1].update(name="bad name"),
     ["features.1.name", "pattern"]),
    ("feature name starting with a digit", lambda r: r["features"][1].update(name="1count"),
     ["features.1.name", "pattern"]),
    ("categorical with an empty list", lambda r: r["features"][2].update(categories=[]),
     ["features.2:", "a categorical feature needs categories"]),
    ("categorical without categories", lambda r: r["features"][2].pop("categories"),
     ["features.2:", "a categorical feature needs categories"]),
    ("numeric with min == max", lambda r: r["features"][0].update(min=10.0),
     ["features.0:", "min must be below max", "min=10, max=10"]),
    ("numeric with min > max", lambda r: r["features"][1].update(min=7),
     ["features.1:", "min must be below max", "min=7, max=5"]),
    ("duplicate feature names", lambda r: r["features"].append({"name": "size", "type": "numeric", "min": 0, "max": 1}),
     ["feature names must be distinct", "size came twice"]),
    ("a feature named as the label", lambda r: r["features"][1].update(name="target"),
     ["feature 'target' clashes with the label"]),
    ("a rule naming an unknown feature", lambda r: condition(r, feature="weight", op=">", value=1),
     ["fallback rule 'big' names unknown feature 'weight'"]),
    ("a rule with a category the feature lacks", lambda r: condition(r, feature="colour", op="==", value="green"),
     ["fallback rule 'big'", "'green' is not a category of 'colour'"]),
    ("`in` with a single value", lambda r: condition(r, feature="colour", op="in", value="red"),
     ["fallback.rules.0.when.0", "op 'in' takes a list of values"]),
    ("a numeric rule value that is a string", lambda r: condition(r, feature="size", op=">", value="five"),
     ["fallback rule 'big'", "'size' is numeric, so its values must be numbers"]),
    ("threshold above 1", lambda r: r.update(threshold=1.5),
     ["threshold:", "threshold must be in (0, 1) or best_f1, but was 1.5"]),
    ("threshold 0", lambda r: r.update(threshold=0.0),
     ["threshold:", "threshold must be in (0, 1) or best_f1, but was 0.0"]),
    ("fallback threshold out of range", lambda r: r["fallback"].update(threshold=1.0),
     ["fallback.threshold:", "less than 1"]),
    ("data with both path and generator", lambda r: r.update(data={"path": "a.csv", "generator": "g.py"}),
     ["data:", "give exactly one of path (a data file) or generator (a Python file)"]),
    ("data with neither path nor generator", lambda r: r.update(data={"rows": [0, 10]}),
     ["data:", "give exactly one of path (a data file) or generator (a Python file)"]),
]


@pytest.mark.parametrize(("edit", "says"), [f[1:] for f in FAULTS], ids=[f[0] for f in FAULTS])
def test_each_fault_is_one_error_naming_the_field(edit, says):
    with pytest.raises(ProjectError) as e:
        project.parse(changed(edit), path=FILE)
    message = str(e.value)
    assert message.startswith(f"{FILE}: "), message
    for part in says:
        assert part in message, message


@pytest.mark.parametrize(("section", "value", "says"), [
    ("drift", {"min_psii": 0.1}, ["drift.min_psii", "Extra inputs are not permitted"]),
    ("gate", {"flor": 0.6}, ["gate.flor", "Extra inputs are not permitted"]),
    ("gate", {"floor": 0.2}, ["gate.floor", "greater than or equal to 0.5"]),
])
def test_drift_and_gate_overrides_are_checked_by_the_settings_classes(section, value, says):
    p = project.parse(changed(lambda r: r.update({section: value})), path=FILE)  # the file itself parses
    with pytest.raises(ProjectError) as e:
        check_project_overrides(p)
    message = str(e.value)
    assert message.startswith(f"{FILE}: {section}."), message  # the file, not its folder
    for part in says:
        assert part in message, message
    check_project_overrides(project.parse(changed(lambda r: r.update({section: {}})), path=FILE))


def write_project(directory: Path, **extra: Any) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "healmesh.yaml"
    path.write_text(yaml.safe_dump({**copy.deepcopy(VALID), **extra}, sort_keys=False))
    return path


@pytest.fixture
def fresh_settings():
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_the_environment_wins_over_the_files_gate_and_the_file_over_the_default(tmp_path, monkeypatch,
                                                                                 fresh_settings):
    default = GateConfig().floor
    assert default != 0.6
    monkeypatch.delenv("HEALMESH_RETRAIN__GATE__FLOOR", raising=False)
    monkeypatch.setenv(project.ENV_VAR, str(write_project(tmp_path / "with-gate", gate={"floor": 0.6})))
    assert Settings().retrain.gate.floor == 0.6
    assert get_settings().retrain.gate.floor == 0.6
    assert Settings().retrain.gate.margin == GateConfig().margin  # the rest of the gate: the defaults

    monkeypatch.setenv("HEALMESH_RETRAIN__GATE__FLOOR", "0.7")
    assert Settings().retrain.gate.floor == 0.7

    monkeypatch.delenv("HEALMESH_RETRAIN__GATE__FLOOR")
    monkeypatch.setenv(project.ENV_VAR, str(write_project(tmp_path / "without-gate")))
    assert Settings().retrain.gate.floor == default


# --- `healmesh up` on a bad project: exit 1, the field named, nothing created ---------------------

def run_up(project_file: Path, home: Path) -> subprocess.CompletedProcess[str]:
    # every port a free one: even an `up` that failed to stop early would not touch the defaults
    ports = {f"HEALMESH_{name.upper()}_PORT": str(procs.free_port()) for name in
             ("gateway", "xgb", "torch", "fallback", "redis", "mlflow", "airflow", "prometheus", "alertmanager")}
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALMESH_") and k != "MLFLOW_TRACKING_URI"}
    env |= {project.ENV_VAR: str(project_file), "HEALMESH_HOME": str(home), **ports}
    cli = [sys.executable, "-m", "healmesh.ops.cli"]
    try:
        return subprocess.run([*cli, "up", "--no-airflow"], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=120)
    finally:
        if (home / "run").exists():  # an `up` that went on anyway: stop what it started
            subprocess.run([*cli, "down"], cwd=ROOT, env=env, capture_output=True, timeout=180)


def test_up_with_a_malformed_project_file_exits_1_naming_the_field_and_creates_nothing(tmp_path):
    bad = write_project(tmp_path / "bad")
    raw = yaml.safe_load(bad.read_text())
    raw["features"][0]["max"] = -1.0
    bad.write_text(yaml.safe_dump(raw, sort_keys=False))
    home = tmp_path / "home"
    done = run_up(bad, home)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert "features.0:" in done.stderr and "min must be below max" in done.stderr, done.stderr
    assert str(bad) in done.stderr
    assert not home.exists(), sorted(p.name for p in home.iterdir())


def test_up_with_data_lacking_a_declared_column_exits_1_naming_the_column_and_creates_nothing(tmp_path):
    directory = tmp_path / "no-count"
    (directory / "data.csv").parent.mkdir(parents=True)
    # `count` is declared, the file has the other features and the label only
    (directory / "data.csv").write_text("size,colour,target\n" + "".join(
        f"{i % 10},{'red' if i % 3 else 'blue'},{i % 2}\n" for i in range(50)))
    good_yaml = write_project(directory)
    project.parse(yaml.safe_load(good_yaml.read_text()), path=good_yaml)  # the file itself is valid
    home = tmp_path / "home"
    done = run_up(good_yaml, home)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert "column 'count'" in done.stderr and "missing column" in done.stderr, done.stderr
    assert "data.csv (the data of " in done.stderr and str(good_yaml) in done.stderr, done.stderr  # names both files
    assert not home.exists(), sorted(p.name for p in home.iterdir())
