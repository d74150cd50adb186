import math

import pandas as pd
import pytest
from pydantic import ValidationError

from healmesh import schema
from healmesh.data import generate
from healmesh.schema import SchemaError

Transaction = schema.active().transaction
validate_frame = schema.active().validate_frame


def valid_record() -> dict:
    row = generate(1, seed=1)[list(schema.active().feature_names)].iloc[0].to_dict()
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}


def test_schema_has_numeric_and_categorical_features_with_domains():
    assert 12 <= len(schema.active().features) <= 20
    assert len(schema.active().numeric) >= 8 and len(schema.active().categorical) >= 3
    for f in schema.active().numeric:
        assert f.min < f.max and f.unit
    for f in schema.active().categorical:
        assert len(set(f.categories)) == len(f.categories) >= 2
    assert len(set(schema.active().feature_names)) == len(schema.active().feature_names)


def test_transaction_accepts_a_generated_record():
    rec = valid_record()
    assert Transaction(**rec).model_dump()["amount"] == rec["amount"]


@pytest.mark.parametrize("field,value,error_type", [
    ("amount", -1.0, "greater_than_equal"),
    ("amount", 60_000.0, "less_than_equal"),
    ("hour", 24, "less_than_equal"),
    ("hour", 3.5, "int_type"),
    ("amount", "12.5", "float_type"),  # strings are not numbers
    ("amount", True, "float_type"),
    ("amount", math.inf, "finite_number"),
    ("channel", "carrier_pigeon", "literal_error"),
    ("geo", None, "literal_error"),
])
def test_transaction_names_the_bad_field(field, value, error_type):
    rec = valid_record() | {field: value}
    with pytest.raises(ValidationError) as exc:
        Transaction(**rec)
    errors = exc.value.errors()
    assert [e["loc"] for e in errors] == [(field,)]
    assert errors[0]["type"] == error_type


def test_transaction_reports_missing_and_unknown_fields():
    rec = valid_record()
    del rec["merchant_category"]
    rec["amout"] = 3.0
    with pytest.raises(ValidationError) as exc:
        Transaction(**rec)
    kinds = {(e["loc"][0], e["type"]) for e in exc.value.errors()}
    assert kinds == {("merchant_category", "missing"), ("amout", "extra_forbidden")}


def test_card_id_is_optional_and_not_a_feature():
    rec = valid_record()
    assert Transaction(**rec).model_dump()["card_id"] is None
    assert Transaction(**(rec | {"card_id": "card-1"})).model_dump()["card_id"] == "card-1"
    assert schema.active().entity_key not in schema.active().feature_names


def test_validate_frame_names_column_and_first_bad_row():
    df = generate(50, seed=2)
    df.loc[7, "hour"] = 30
    df.loc[9, "hour"] = 31
    with pytest.raises(SchemaError) as exc:
        validate_frame(df)
    assert exc.value.column == "hour" and exc.value.row == 7
    assert "column 'hour', row 7" in str(exc.value)


def test_validate_frame_missing_column_and_bad_category():
    df = generate(20, seed=3)
    with pytest.raises(SchemaError, match="column 'geo': missing column"):
        validate_frame(df.drop(columns=["geo"]))
    df.loc[4, "card_type"] = "platinum"
    with pytest.raises(SchemaError) as exc:
        validate_frame(df)
    assert (exc.value.column, exc.value.row) == ("card_type", 4)


def test_validate_frame_requires_label_when_asked_and_checks_it():
    df = generate(20, seed=4)
    validate_frame(df.drop(columns=["is_fraud"]))
    with pytest.raises(SchemaError, match="is_fraud"):
        validate_frame(df.drop(columns=["is_fraud"]), require_label=True)
    df.loc[3, "is_fraud"] = 2
    with pytest.raises(SchemaError) as exc:
        validate_frame(df, require_label=True)
    assert (exc.value.column, exc.value.row) == ("is_fraud", 3)


def test_validate_frame_rejects_text_in_numeric_column():
    df = generate(10, seed=5).astype({"amount": object})
    df.loc[2, "amount"] = "lots"
    with pytest.raises(SchemaError) as exc:
        validate_frame(df)
    assert (exc.value.column, exc.value.row) == ("amount", 2)
    assert "not a number" in str(exc.value)


def test_validate_frame_casts_integers():
    df = generate(10, seed=6)
    df["hour"] = df["hour"].astype(float)
    out = validate_frame(df)
    assert out["hour"].dtype.kind == "i"
    assert isinstance(out, pd.DataFrame)
