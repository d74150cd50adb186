"""The one feature schema for card-transaction fraud scoring.

Everything that names a feature reads it from ``FEATURES``: request validation
(``Transaction``), the data generator, file loading (``validate_frame``), the fallback
rules, model encoding and drift detection. Nothing else lists the features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, create_model

from healmesh.errors import InvalidData

LABEL = "is_fraud"
# The entity key: optional on requests, used for sticky routing; never a model input.
ENTITY_KEY = "card_id"


@dataclass(frozen=True)
class NumericFeature:
    name: str
    unit: str
    min: float
    max: float
    description: str
    integer: bool = False
    # Heavy right tail: modelled on a log scale, shifted multiplicatively.
    skewed: bool = False

    kind: Literal["numeric"] = "numeric"


@dataclass(frozen=True)
class CategoricalFeature:
    name: str
    categories: tuple[str, ...]
    description: str

    kind: Literal["categorical"] = "categorical"


Feature = NumericFeature | CategoricalFeature

FEATURES: tuple[Feature, ...] = (
    NumericFeature("amount", "USD", 0.0, 50_000.0, "transaction amount", skewed=True),
    NumericFeature("hour", "hour of day (card holder's local time)", 0, 23, "hour of the transaction", integer=True),
    NumericFeature("distance_from_home_km", "km", 0.0, 20_000.0, "distance from the card holder's home", skewed=True),
    NumericFeature("distance_from_last_txn_km", "km", 0.0, 20_000.0, "distance from the card's previous transaction",
                   skewed=True),
    NumericFeature("seconds_since_last_txn", "s", 0.0, 31_536_000.0, "time since the card's previous transaction",
                   skewed=True),
    NumericFeature("txn_count_1h", "transactions", 0, 200, "card's transactions in the last hour", integer=True),
    NumericFeature("txn_count_24h", "transactions", 0, 1_000, "card's transactions in the last 24 hours", integer=True),
    NumericFeature("amount_to_avg_7d", "ratio", 0.0, 1_000.0, "amount divided by the card's 7-day average amount",
                   skewed=True),
    NumericFeature("card_age_days", "days", 0, 20_000, "days since the card was issued", integer=True),
    NumericFeature("customer_age_years", "years", 18, 110, "card holder's age", integer=True),
    NumericFeature("merchant_risk_score", "probability", 0.0, 1.0, "merchant's historical chargeback risk"),
    NumericFeature("failed_auth_24h", "attempts", 0, 50, "failed PIN/CVV attempts on the card in 24 hours",
                   integer=True),
    CategoricalFeature(
        "merchant_category",
        ("grocery", "restaurant", "fuel", "online_retail", "entertainment", "pharmacy",
         "travel", "electronics", "atm_cash", "jewelry", "gambling", "other"),
        "merchant category group",
    ),
    CategoricalFeature(
        "channel",
        ("chip", "contactless", "swipe", "online", "phone_order", "atm"),
        "how the card was presented",
    ),
    CategoricalFeature("geo", ("domestic", "foreign"), "merchant country against the card's country"),
    CategoricalFeature("card_type", ("debit", "credit", "prepaid"), "card product"),
)

FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
NUMERIC: tuple[NumericFeature, ...] = tuple(f for f in FEATURES if isinstance(f, NumericFeature))
CATEGORICAL: tuple[CategoricalFeature, ...] = tuple(f for f in FEATURES if isinstance(f, CategoricalFeature))
BY_NAME: dict[str, Feature] = {f.name: f for f in FEATURES}


def feature(name: str) -> Feature:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown feature {name!r}; the schema has {', '.join(FEATURE_NAMES)}") from None


# --- request model ---------------------------------------------------------------------------


def example_row() -> dict[str, Any]:
    """One valid transaction (the low end of every range, the first category): what a warm-up or
    a readiness check sends through a model."""
    row: dict[str, Any] = {}
    for f in FEATURES:
        if isinstance(f, CategoricalFeature):
            row[f.name] = f.categories[0]
        else:
            row[f.name] = int(f.min) if f.integer else float(f.min)
    return row


def _field_type(f: Feature) -> Any:
    if isinstance(f, CategoricalFeature):
        return Annotated[Literal[f.categories], Field(description=f"{f.description}; one of {', '.join(f.categories)}")]
    base = int if f.integer else float
    # strict: "12.5" (a string) or true are wrong types, not numbers to coerce
    return Annotated[
        base,
        Field(ge=f.min, le=f.max, strict=True, allow_inf_nan=False,
              description=f"{f.description} [{f.unit}], {f.min:g} to {f.max:g}"),
    ]


def _build_transaction_model() -> type[BaseModel]:
    fields: dict[str, Any] = {f.name: (_field_type(f), ...) for f in FEATURES}
    fields[ENTITY_KEY] = (
        Annotated[str | None, Field(default=None, min_length=1, max_length=64,
                                    description="card identifier; routing key, not a model input")],
        None,
    )
    return create_model(
        "Transaction",
        __config__=ConfigDict(extra="forbid", frozen=True),
        __doc__="One card transaction to score. Unknown fields are refused.",
        **fields,
    )


Transaction: type[BaseModel] = _build_transaction_model()


# --- frame validation (files, generator output) ---------------------------------------------


class SchemaError(InvalidData):
    """A table does not match the schema; names the column and the first bad row."""

    def __init__(self, column: str, message: str, row: int | None = None) -> None:
        self.column = column
        self.row = row
        where = f"column {column!r}" + (f", row {row}" if row is not None else "")
        super().__init__(f"{where}: {message}")


def validate_frame(df: pd.DataFrame, *, require_label: bool = False) -> pd.DataFrame:
    """Check every feature column of ``df``; return a copy with schema dtypes.

    Rows are numbered from 0 in the order of the file (the first data row is row 0).
    """
    required = list(FEATURE_NAMES) + ([LABEL] if require_label else [])
    for name in required:
        if name not in df.columns:
            raise SchemaError(name, "missing column")
    if df.empty:
        raise SchemaError(FEATURE_NAMES[0], "the table has no rows")
    out = df.copy()
    for f in FEATURES:
        col = df[f.name]
        if isinstance(f, CategoricalFeature):
            values = col.astype("string")
            bad = ~values.isin(f.categories).fillna(False).to_numpy()
            _raise_first(f.name, bad, col, f"not one of {', '.join(f.categories)}")
            out[f.name] = values.astype(str)
            continue
        numeric = pd.to_numeric(col, errors="coerce")
        not_number = numeric.isna().to_numpy()
        _raise_first(f.name, not_number, col, "not a number")
        arr = numeric.to_numpy(dtype=float)
        _raise_first(f.name, ~np.isfinite(arr), col, "not a finite number")
        out_of_range = (arr < f.min) | (arr > f.max)
        _raise_first(f.name, out_of_range, col, f"outside [{f.min:g}, {f.max:g}]")
        if f.integer:
            _raise_first(f.name, arr != np.floor(arr), col, "not a whole number")
            out[f.name] = arr.astype(np.int64)
        else:
            out[f.name] = arr
    if LABEL in df.columns:
        labels = pd.to_numeric(df[LABEL], errors="coerce")
        bad = ~labels.isin([0, 1]).to_numpy()
        _raise_first(LABEL, bad, df[LABEL], "label must be 0 or 1")
        out[LABEL] = labels.astype(np.int64)
    return out


def _raise_first(column: str, bad: np.ndarray, col: pd.Series, message: str) -> None:
    if bad.any():
        row = int(np.argmax(bad))
        raise SchemaError(column, f"value {col.iloc[row]!r} is {message}", row=row)


def describe() -> list[dict[str, Any]]:
    """The schema as plain data (for the CLI and docs)."""
    rows: list[dict[str, Any]] = []
    for f in FEATURES:
        if isinstance(f, CategoricalFeature):
            rows.append({"name": f.name, "type": "categorical", "values": list(f.categories),
                         "description": f.description})
        else:
            rows.append({"name": f.name, "type": "integer" if f.integer else "number", "unit": f.unit,
                         "min": f.min, "max": f.max, "description": f.description})
    return rows

