"""Tests healmesh.schema: the request model and frame validation, for each bundled example
(the ``example`` fixture); the fraud example's own feature counts are checked apart."""

import math

import pandas as pd
import pytest
from pydantic import ValidationError

from healmesh import schema
from healmesh.schema import SchemaError


def test_active_schema_follows_the_served_project(example):
    assert schema.active().fingerprint() == example.schema.fingerprint()
    assert schema.active().feature_names == example.project.feature_names


def test_schema_features_have_domains(example):
    s = example.schema
    assert s.features and len(set(s.feature_names)) == len(s.feature_names)
    for f in s.numeric:
        assert f.min < f.max and f.unit
    for f in s.categorical:
        assert len(set(f.categories)) == len(f.categories) >= 2


def test_fraud_schema_has_numeric_and_categorical_features(fraud_example):
    # fraud-only: the counts are the fraud example's content (weather has 8 numeric features, no category)
    s = fraud_example.schema
    assert 12 <= len(s.features) <= 20
    assert len(s.numeric) >= 8 and len(s.categorical) >= 3


def test_transaction_accepts_valid_records(example):
    for rec in example.records(20, seed=1):
        dumped = example.schema.transaction(**rec).model_dump()
        assert {k: dumped[k] for k in rec} == rec


# (kind of feature, the bad value from that feature, the pydantic error type)
BAD_VALUES = [
    pytest.param("numeric", lambda f: f.min - 1.0, "greater_than_equal", id="numeric-below-min"),
    pytest.param("numeric", lambda f: f.max + 1.0, "less_than_equal", id="numeric-above-max"),
    pytest.param("integer", lambda f: f.max + 1, "less_than_equal", id="integer-above-max"),
    pytest.param("integer", lambda f: 3.5, "int_type", id="integer-fraction"),
    pytest.param("numeric", lambda f: "12.5", "float_type", id="numeric-string"),  # strings are not numbers
    pytest.param("numeric", lambda f: True, "float_type", id="numeric-bool"),
    pytest.param("numeric", lambda f: None, "float_type", id="numeric-none"),
    pytest.param("numeric", lambda f: math.inf, "finite_number", id="numeric-inf"),
    pytest.param("categorical", lambda f: "carrier_pigeon", "literal_error", id="categorical-unknown"),
    pytest.param("categorical", lambda f: None, "literal_error", id="categorical-none"),
]


@pytest.mark.parametrize("kind,bad,error_type", BAD_VALUES)
def test_transaction_names_the_bad_field(example, kind, bad, error_type):
    f = example.first(kind)
    rec = example.records(1, seed=1)[0] | {f.name: bad(f)}
    with pytest.raises(ValidationError) as exc:
        example.schema.transaction(**rec)
    errors = exc.value.errors()
    assert [e["loc"] for e in errors] == [(f.name,)]
    assert errors[0]["type"] == error_type


def test_transaction_reports_missing_and_unknown_fields(example):
    rec = example.records(1, seed=1)[0]
    missing = example.schema.feature_names[-1]
    typo = example.schema.feature_names[0][:-1]  # "amoun", "temperatur"
    del rec[missing]
    rec[typo] = 3.0
    with pytest.raises(ValidationError) as exc:
        example.schema.transaction(**rec)
    kinds = {(e["loc"][0], e["type"]) for e in exc.value.errors()}
    assert kinds == {(missing, "missing"), (typo, "extra_forbidden")}


def test_entity_key_is_optional_and_not_a_feature(example):
    s = example.schema
    rec = {k: v for k, v in example.records(1, seed=1)[0].items() if k in s.feature_names}
    if s.entity_key is None:
        # no entity key declared: the request model is the features, nothing else
        assert set(s.transaction.model_fields) == set(s.feature_names)
        return
    assert s.transaction(**rec).model_dump()[s.entity_key] is None
    assert s.transaction(**(rec | {s.entity_key: "key-1"})).model_dump()[s.entity_key] == "key-1"
    assert s.entity_key not in s.feature_names


def test_validate_frame_names_column_and_first_bad_row(example):
    f = example.first("numeric")
    df = example.rows(50, seed=2)
    df.loc[7, f.name] = f.max + 7
    df.loc[9, f.name] = f.max + 8
    with pytest.raises(SchemaError) as exc:
        example.schema.validate_frame(df)
    assert exc.value.column == f.name and exc.value.row == 7
    assert f"column '{f.name}', row 7" in str(exc.value)


def test_validate_frame_names_a_missing_column(example):
    df = example.rows(20, seed=3)
    name = example.schema.feature_names[-1]
    with pytest.raises(SchemaError, match=f"column '{name}': missing column"):
        example.schema.validate_frame(df.drop(columns=[name]))


def test_validate_frame_names_a_bad_category(example):
    f = example.first("categorical")
    df = example.rows(20, seed=3)
    df.loc[4, f.name] = "platinum"
    with pytest.raises(SchemaError) as exc:
        example.schema.validate_frame(df)
    assert (exc.value.column, exc.value.row) == (f.name, 4)


def test_validate_frame_requires_label_when_asked_and_checks_it(example):
    label = example.schema.label
    df = example.rows(20, seed=4)
    example.schema.validate_frame(df.drop(columns=[label]))
    with pytest.raises(SchemaError, match=label):
        example.schema.validate_frame(df.drop(columns=[label]), require_label=True)
    df.loc[3, label] = 2
    with pytest.raises(SchemaError) as exc:
        example.schema.validate_frame(df, require_label=True)
    assert (exc.value.column, exc.value.row) == (label, 3)


def test_validate_frame_rejects_text_in_numeric_column(example):
    name = example.first("numeric").name
    df = example.rows(10, seed=5).astype({name: object})
    df.loc[2, name] = "lots"
    with pytest.raises(SchemaError) as exc:
        example.schema.validate_frame(df)
    assert (exc.value.column, exc.value.row) == (name, 2)
    assert "not a number" in str(exc.value)


def test_validate_frame_casts_numbers_given_as_text(example):
    # what a CSV file gives (its cells are read as strings)
    name = example.first("numeric").name
    df = example.rows(10, seed=6)
    expected = df[name].to_numpy(dtype=float)
    df[name] = [repr(float(v)) for v in expected]
    out = example.schema.validate_frame(df)
    assert out[name].dtype.kind == "f" and (out[name].to_numpy() == expected).all()


def test_validate_frame_casts_integers(example):
    name = example.first("integer").name
    df = example.rows(10, seed=6)
    df[name] = df[name].astype(float)
    out = example.schema.validate_frame(df)
    assert out[name].dtype.kind == "i"
    assert isinstance(out, pd.DataFrame)


def test_a_data_files_own_label_classes_become_0_1_once_and_stay_valid_inside_the_mesh(tmp_path):
    """A project whose label is yes/no: its data file goes through validate_raw (yes -> 1); what the
    mesh then holds (training splits, the feature log's frames) has 0/1 and validates as it is.
    Mapping it a second time failed every `up` of such a project ("value 0 is not the positive
    class 'yes'"), and would have failed every retrain on the feature log's labels."""
    from healmesh import project

    p = project.parse({"name": "yesno", "features": [{"name": "x", "type": "numeric", "min": 0, "max": 1}],
                       "label": {"column": "Outcome", "positive": "yes", "negative": "no"},
                       "data": {"path": "d.csv"}}, path=tmp_path / "p.yaml")
    s = schema.Schema.from_project(p)
    raw = pd.DataFrame({"x": ["0.1", "0.9", "0.5"], "Outcome": ["yes", "no", "yes"]})
    inside = s.validate_raw(raw, require_label=True)
    assert inside["Outcome"].tolist() == [1, 0, 1]
    assert s.validate_frame(inside, require_label=True)["Outcome"].tolist() == [1, 0, 1]
    with pytest.raises(SchemaError, match="'Outcome'.*label must be 0 or 1"):
        s.validate_frame(raw, require_label=True)  # a file's own classes are not the mesh's 0/1
    with pytest.raises(SchemaError, match="'Outcome', row 1.*'maybe'"):
        s.validate_raw(raw.assign(Outcome=["yes", "maybe", "no"]), require_label=True)
