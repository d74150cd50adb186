"""Tests healmesh.ops.init_project: `healmesh init` drafts a project file from a data file (types,
ranges, categories, log scale, the label's positive class, the columns it cannot type), and the
file it writes loads and accepts the very data it came from."""

from __future__ import annotations

import string
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from healmesh import project
from healmesh.data.files import read_table
from healmesh.errors import InvalidData
from healmesh.ops import cli, init_project
from healmesh.ops.init_project import data_path_for, draft, feature_name, project_name, render_yaml
from healmesh.schema import Schema

ROWS = 400


def _word(rng: np.random.Generator, n: int = 6) -> str:
    return "".join(rng.choice(list(string.ascii_lowercase), n))


@pytest.fixture
def data(tmp_path: Path) -> dict:
    """A CSV with random feature names and values (numpy's seeded RNG), and what each column is."""
    rng = np.random.default_rng(7)
    names = [f"{_word(rng)}_{i}" for i in range(5)]
    heavy, normal, count, cat, key = names
    spaced = f"{_word(rng).title()} Score-{rng.integers(1, 9)}"
    categories = sorted({_word(rng, 4) for _ in range(6)})
    frame = pd.DataFrame({
        heavy: rng.lognormal(2.0, 2.0, ROWS).round(3),           # >= 0, heavy right tail
        normal: rng.normal(-3.0, 10.0, ROWS).round(4),            # negatives, no tail
        count: rng.integers(3, 40, ROWS),
        cat: rng.choice(categories, ROWS),
        spaced: rng.uniform(0.5, 2.0, ROWS).round(3),
        key: [f"k{i % 37}" for i in range(ROWS)],
        "gap": np.where(np.arange(ROWS) == 123, np.nan, rng.integers(0, 5, ROWS)),
        "ident": [f"id-{_word(rng, 10)}" for _ in range(ROWS)],
        "mixed": [str(v) for v in rng.integers(0, 9, ROWS - 1)] + ["n/a"],
        "constant": ["same"] * ROWS,
        "flat": [2.5] * ROWS,
        "outcome": rng.choice(["yes", "no"], ROWS, p=[0.7, 0.3]),  # "yes" is the majority
    })
    path = tmp_path / "My Data-2024.csv"
    frame.to_csv(path, index=False)
    return {"path": path, "frame": frame, "heavy": heavy, "normal": normal, "count": count, "cat": cat,
            "spaced": spaced, "key": key, "categories": categories}


def _features(d: init_project.Draft) -> dict[str, dict]:
    return {f.get("column", f["name"]): f for f in d.project["features"]}


def _draft(data: dict, **kw) -> init_project.Draft:
    return draft(read_table(data["path"]), label="outcome", data_path="x.csv", **kw)


def test_types_ranges_categories_and_log_scale(data):
    features = _features(_draft(data, entity_key=data["key"]))
    frame = data["frame"]
    assert features[data["heavy"]]["type"] == "numeric"
    assert features[data["normal"]]["type"] == "numeric"
    assert features[data["count"]]["type"] == "integer"
    assert features[data["spaced"]]["type"] == "numeric"
    for column in (data["heavy"], data["normal"], data["count"], data["spaced"]):
        f, values = features[column], frame[column]
        lo, hi, span = values.min(), values.max(), values.max() - values.min()
        assert f["max"] >= hi + 0.25 * span  # widened, not just containing
        if lo >= 0:
            assert f["min"] == max(0, f["min"]) and f["min"] <= max(0.0, lo - 0.25 * span)
        else:
            assert lo - 0.3 * span < f["min"] <= lo - 0.25 * span
    count = features[data["count"]]
    assert isinstance(count["min"], int) and isinstance(count["max"], int)
    lo, hi = int(frame[data["count"]].min()), int(frame[data["count"]].max())
    assert (count["min"], count["max"]) == (max(0, int(np.floor(lo - (hi - lo) / 4))), int(np.ceil(hi + (hi - lo) / 4)))
    assert features[data["heavy"]].get("log_scale") is True
    assert "log_scale" not in features[data["normal"]] and "log_scale" not in features[data["count"]]
    assert features[data["cat"]] == {"name": data["cat"], "type": "categorical", "categories": data["categories"]}


def test_a_column_name_that_is_not_a_feature_name_is_mapped(data):
    d = _draft(data)
    f = _features(d)[data["spaced"]]
    expected = data["spaced"].lower().replace(" ", "_").replace("-", "_")
    assert f["name"] == expected and f["column"] == data["spaced"]
    assert any(data["spaced"] in g and expected in g for g in d.guesses)
    # a name of its own is kept as it is, with no column:
    assert "column" not in _features(d)[data["heavy"]]


def test_feature_names_are_made_valid_and_distinct():
    taken = {"a_b", "label"}
    assert feature_name("A b", taken) == "a_b_2"
    assert feature_name("9 lives", set()) == "f_9_lives"
    assert feature_name("ts", {"ts"}) == "ts_2"
    frame = pd.DataFrame({"a_b": ["1", "2"], "a b": ["3", "4"], "ts": ["5", "6"], "y": ["0", "1"]})
    d = draft(frame, label="y", data_path="x.csv")
    assert [(f["name"], f.get("column")) for f in d.project["features"]] == [
        ("a_b", None), ("a_b_2", "a b"), ("ts_2", "ts")]


def test_columns_it_cannot_type_are_named_with_the_reason_and_left_out(data):
    d = _draft(data)
    reasons = {u.column: u.reason for u in d.untyped}
    assert set(reasons) == {"gap", "ident", "mixed", "constant", "flat"}
    assert "1 of 400 cells are empty" in reasons["gap"] and "row 123" in reasons["gap"]
    assert "looks like an id or free text" in reasons["ident"]
    assert "mixes numbers" in reasons["mixed"] and "'n/a'" in reasons["mixed"]
    assert "one value only ('same')" in reasons["constant"] and "one value only (2.5)" in reasons["flat"]
    assert not set(reasons) & set(_features(d))
    text = render_yaml(d)
    for column, reason in reasons.items():
        assert f"#   - {column!r}: {reason}" in text
    # a string column of at most 50 values is a category (the entity key, when not named one)
    assert _features(d)[data["key"]]["type"] == "categorical"


def test_the_label_positive_class(data):
    d = _draft(data)
    assert d.project["label"] == {"column": "outcome", "positive": "yes", "negative": "no"}
    assert any("label 'outcome'" in g and "'yes'" in g for g in d.guesses)
    assert _draft(data, positive="no").project["label"]["positive"] == "no"
    with pytest.raises(InvalidData, match=r"--positive 'maybe'.*'no' and 'yes'"):
        _draft(data, positive="maybe")
    # no yes-like value: the rarer one
    rare = pd.DataFrame({"x": ["1", "2", "3", "4", "5"], "y": ["ham", "spam", "ham", "ham", "spam"]})
    assert draft(rare, label="y", data_path="x.csv").project["label"] == {
        "column": "y", "positive": "spam", "negative": "ham"}
    # numbers are written as numbers, 1 is positive even as the majority
    ones = pd.DataFrame({"x": ["1", "2", "3"], "y": ["1", "0", "1"]})
    assert draft(ones, label="y", data_path="x.csv").project["label"] == {"column": "y", "positive": 1, "negative": 0}
    assert draft(ones, label="y", positive="0", data_path="x.csv").project["label"]["positive"] == 0


def test_a_missing_or_not_binary_label_is_a_clear_error(data):
    frame = read_table(data["path"])
    with pytest.raises(InvalidData, match=r"label column 'is_bad' is not in the data; its columns are: .*outcome"):
        draft(frame, label="is_bad", data_path="x.csv")
    with pytest.raises(InvalidData, match=r"label column 'three' must have exactly two distinct values, but has 3"):
        draft(frame.assign(three=["a", "b", "c"] * (ROWS // 3) + ["a"] * (ROWS % 3)), label="three",
              data_path="x.csv")


def test_entity_key_and_name(data):
    d = _draft(data, entity_key=data["key"], name="mine")
    assert d.project["entity_key"] == data["key"] and d.project["name"] == "mine"
    assert data["key"] not in _features(d)
    with pytest.raises(InvalidData, match="not a valid name"):
        _draft(data, entity_key=data["spaced"])
    with pytest.raises(InvalidData, match="not a valid project name"):
        _draft(data, name="Not Valid")
    assert project_name("/tmp/My Data-2024.csv.gz") == "my-data-2024"
    assert project_name("pkg:somepkg/data/Loans.parquet") == "loans"


def test_data_path_is_relative_to_the_project_file(tmp_path, monkeypatch):
    assert data_path_for(str(tmp_path / "d" / "x.csv"), tmp_path / "p" / "healmesh.yaml") == "../d/x.csv"
    assert data_path_for("pkg:somepkg/x.csv", tmp_path / "healmesh.yaml") == "pkg:somepkg/x.csv"

    def other_drive(*_a):
        raise ValueError("path is on mount 'D:', start on mount 'C:'")

    monkeypatch.setattr(init_project.os.path, "relpath", other_drive)
    assert data_path_for(str(tmp_path / "x.csv"), tmp_path / "p" / "h.yaml") == str((tmp_path / "x.csv").resolve())


def test_the_written_file_loads_and_accepts_its_own_data(data, tmp_path):
    out = tmp_path / "proj" / "healmesh.yaml"
    assert init_project.run(data=str(data["path"]), label="outcome", out=out, entity_key=data["key"]) == 0
    p = project.load(out)
    assert p.name == "my-data-2024" and p.entity_key == data["key"]
    assert p.data.path == "../My Data-2024.csv" and p.resolve(p.data.path) == str(data["path"].resolve())
    by_source = {f.source: f for f in p.features}
    assert by_source[data["spaced"]].column == data["spaced"]
    checked = Schema.from_project(p).validate_raw(read_table(data["path"]), require_label=True)
    assert checked["outcome"].tolist() == (data["frame"]["outcome"] == "yes").astype(int).tolist()
    assert by_source[data["spaced"]].name in checked.columns
    # every guess is in the header, as a comment
    text = out.read_text()
    guesses = draft(read_table(data["path"]), label="outcome", entity_key=data["key"],
                    data_path=p.data.path).guesses
    assert len(guesses) >= 8
    for g in guesses:
        assert f"#   - {g}" in text
    assert [x.name for x in out.parent.iterdir()] == ["healmesh.yaml"]  # no temp file left


def test_a_parquet_file_with_typed_columns(tmp_path):
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"amount": rng.uniform(1, 50, 200), "n": rng.integers(0, 9, 200),
                          "flag": rng.integers(0, 2, 200).astype(bool), "bad": rng.integers(0, 2, 200) == 1})
    path = tmp_path / "t.parquet"
    frame.to_parquet(path)
    out = tmp_path / "p.yaml"
    assert init_project.run(data=str(path), label="bad", out=out) == 0
    p = project.load(out)
    assert p.label.positive == 1 and p.label.negative == 0
    assert {f.name: f.type.value for f in p.features} == {"amount": "numeric", "n": "integer", "flag": "categorical"}
    checked = Schema.from_project(p).validate_raw(read_table(path), require_label=True)
    assert checked["bad"].tolist() == frame["bad"].astype(int).tolist()


def test_an_existing_file_is_kept_without_force(data, tmp_path, capsys):
    out = tmp_path / "healmesh.yaml"
    out.write_text("mine\n")
    assert init_project.run(data=str(data["path"]), label="outcome", out=out) == 1
    assert out.read_text() == "mine\n" and "pass --force" in capsys.readouterr().err
    assert init_project.run(data=str(data["path"]), label="outcome", out=out, force=True) == 0
    assert project.load(out).label.column == "outcome"


def test_the_cli_end_to_end(data, tmp_path, capsys):
    out = tmp_path / "healmesh.yaml"
    argv = ["init", "--data", str(data["path"]), "--label", "outcome", "--out", str(out),
            "--entity-key", data["key"], "--name", "e2e", "--positive", "no"]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert f"wrote {out}" in err and "looks like an id or free text" in err and "--positive" in err
    p = project.load(out)
    assert (p.name, p.label.positive, p.label.negative, p.entity_key) == ("e2e", "no", "yes", data["key"])
    Schema.from_project(p).validate_raw(read_table(data["path"]), require_label=True)
    assert cli.main(argv) == 1
    assert "exists" in capsys.readouterr().err
    assert cli.main([*argv, "--force", "--label", "nope"]) == 2
    assert "label column 'nope' is not in the data" in capsys.readouterr().err
    assert project.load(out).name == "e2e"  # a failed run leaves the file as it was


def test_a_draft_that_would_refuse_its_own_data_is_not_written(data, tmp_path, monkeypatch):
    real = init_project.draft

    def too_narrow(*a, **kw):
        d = real(*a, **kw)
        numeric = next(f for f in d.project["features"] if f["type"] != "categorical")
        numeric["max"] = numeric["min"] + 1e-9 * (numeric["max"] - numeric["min"])
        return d

    monkeypatch.setattr(init_project, "draft", too_narrow)
    with pytest.raises(InvalidData, match="outside"):
        init_project.run(data=str(data["path"]), label="outcome", out=tmp_path / "p" / "healmesh.yaml")
    assert list((tmp_path / "p").iterdir()) == []
