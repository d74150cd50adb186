"""The feature schema of the project this process serves (``healmesh.project``).

A ``Schema`` is built from a project's declaration and is everything that reads a feature:
request validation (``transaction``), file and frame validation (``validate_frame``), the
model encoding (``encoder``), the fallback rules, drift detection and the reports.
``active()`` is the schema of ``HEALMESH_PROJECT`` (the bundled first example without it); code that
serves one process's project calls it, code that must work for any project takes a ``Schema``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, create_model

from healmesh import project as project_file
from healmesh.errors import InvalidData
from healmesh.project import FeatureKind, Project


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
    # the data file's column, when it differs from the name
    column: str | None = None

    kind: Literal["numeric"] = "numeric"


@dataclass(frozen=True)
class CategoricalFeature:
    name: str
    categories: tuple[str, ...]
    description: str
    column: str | None = None

    kind: Literal["categorical"] = "categorical"


Feature = NumericFeature | CategoricalFeature


class SchemaError(InvalidData):
    """A table does not match the schema; names the column and the first bad row."""

    def __init__(self, column: str, message: str, row: int | None = None) -> None:
        self.column = column
        self.row = row
        where = f"column {column!r}" + (f", row {row}" if row is not None else "")
        super().__init__(f"{where}: {message}")


class Schema:
    """The features, the label and the entity key of one project."""

    def __init__(self, features: tuple[Feature, ...], *, label: str, entity_key: str | None = None,
                 positive: int | str = 1, negative: int | str | None = None) -> None:
        self.features = features
        self.label = label
        self.entity_key = entity_key
        self.positive = positive
        self.negative = negative
        self.feature_names: tuple[str, ...] = tuple(f.name for f in features)
        self.numeric: tuple[NumericFeature, ...] = tuple(f for f in features if isinstance(f, NumericFeature))
        self.categorical: tuple[CategoricalFeature, ...] = tuple(
            f for f in features if isinstance(f, CategoricalFeature))
        self.by_name: dict[str, Feature] = {f.name: f for f in features}

    @classmethod
    def from_project(cls, p: Project) -> Schema:
        out: list[Feature] = []
        for f in p.features:
            if f.type is FeatureKind.CATEGORICAL:
                out.append(CategoricalFeature(f.name, tuple(f.categories or ()), f.description, column=f.column))
            else:
                integer = f.type is FeatureKind.INTEGER
                lo, hi = float(f.min or 0.0), float(f.max or 0.0)
                out.append(NumericFeature(f.name, f.unit, int(lo) if integer else lo, int(hi) if integer else hi,
                                          f.description, integer=integer, skewed=f.log_scale, column=f.column))
        return cls(tuple(out), label=p.label.column, entity_key=p.entity_key, positive=p.label.positive,
                   negative=p.label.negative)

    def feature(self, name: str) -> Feature:
        try:
            return self.by_name[name]
        except KeyError:
            raise KeyError(f"unknown feature {name!r}; the schema has {', '.join(self.feature_names)}") from None

    # --- request model -----------------------------------------------------------------------

    def example_row(self) -> dict[str, Any]:
        """One valid row (the low end of every range, the first category): what a warm-up or
        a readiness check sends through a model."""
        row: dict[str, Any] = {}
        for f in self.features:
            if isinstance(f, CategoricalFeature):
                row[f.name] = f.categories[0]
            else:
                row[f.name] = int(f.min) if f.integer else float(f.min)
        return row

    @cached_property
    def transaction(self) -> type[BaseModel]:
        """The pydantic model of one row to score (named ``Transaction``: the name BentoML's
        OpenAPI document and the typed client know it by)."""
        fields: dict[str, Any] = {f.name: (_field_type(f), ...) for f in self.features}
        if self.entity_key:
            fields[self.entity_key] = (
                Annotated[str | None, Field(default=None, min_length=1, max_length=64,
                                            description="entity key: sticky routing, not a model input")],
                None,
            )
        return create_model(
            "Transaction",
            __config__=ConfigDict(extra="forbid", frozen=True),
            __doc__="One row to score. Unknown fields are refused.",
            **fields,
        )

    @cached_property
    def encoder(self) -> Encoder:
        return Encoder(self)

    # --- frame validation (files, generator output) -----------------------------------------

    def rename_columns(self, df: pd.DataFrame) -> pd.DataFrame:
        """A data file's columns under the features' names (``column:`` in the project file)."""
        mapping = {f.column: f.name for f in self.features if f.column and f.column != f.name}
        return df.rename(columns=mapping) if mapping and set(mapping) & set(df.columns) else df

    def validate_raw(self, df: pd.DataFrame, *, require_label: bool = False) -> pd.DataFrame:
        """``validate_frame`` for a user's data file as it comes: its columns renamed to the features'
        names (``column:``) and its label's classes made 0/1 (1: the project's positive class)."""
        df = self.rename_columns(df)
        if self.label in df.columns:
            df = df.assign(**{self.label: self.binary_labels(df[self.label])})
        return self.validate_frame(df, require_label=require_label)

    def validate_frame(self, df: pd.DataFrame, *, require_label: bool = False) -> pd.DataFrame:
        """Check every feature column of ``df``; return a copy with schema dtypes. A label, when
        present, must be 0/1 already: inside the mesh (the feature log, the feedback API, training
        sets) 1 is the positive class; a data file's own classes go through ``validate_raw``.

        Rows are numbered from 0 in the order of the file (the first data row is row 0).
        """
        required = list(self.feature_names) + ([self.label] if require_label else [])
        for name in required:
            if name not in df.columns:
                raise SchemaError(name, "missing column")
        if df.empty:
            raise SchemaError(self.feature_names[0], "the table has no rows")
        out = df.copy()
        for f in self.features:
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
        if self.label in df.columns:
            labels = pd.to_numeric(df[self.label], errors="coerce")
            bad = ~labels.isin([0, 1]).to_numpy()
            _raise_first(self.label, bad, df[self.label], "label must be 0 or 1")
            out[self.label] = labels.astype(np.int64)
        return out

    def binary_labels(self, col: pd.Series) -> pd.Series:
        """The label column as 0/1, 1 for the positive class; any third value is named."""
        if self.positive in (0, 1) and self.negative in (None, 0, 1):
            labels = pd.to_numeric(col, errors="coerce")
            bad = ~labels.isin([0, 1]).to_numpy()
            _raise_first(self.label, bad, col, "label must be 0 or 1")
            out = labels.astype(np.int64)
            return out if self.positive == 1 else 1 - out
        raw = col.astype("string") if isinstance(self.positive, str) else pd.to_numeric(col, errors="coerce")
        positive = raw == self.positive
        if self.negative is not None:
            allowed = positive | (raw == self.negative)
        else:
            others = raw[~positive.fillna(False)].dropna().unique()
            allowed = positive | (raw == others[0]) if len(others) == 1 else positive
        bad = ~allowed.fillna(False).to_numpy()
        _raise_first(self.label, bad, col, f"not the positive class {self.positive!r} nor the one other value")
        return positive.astype(np.int64)

    # --- description ---------------------------------------------------------------------------

    def describe(self) -> list[dict[str, Any]]:
        """The features as plain data (the CLI, docs, the fingerprint, a model version's schema)."""
        rows: list[dict[str, Any]] = []
        for f in self.features:
            if isinstance(f, CategoricalFeature):
                rows.append({"name": f.name, "type": "categorical", "values": list(f.categories),
                             "description": f.description})
            else:
                rows.append({"name": f.name, "type": "integer" if f.integer else "number", "unit": f.unit,
                             "min": f.min, "max": f.max, "description": f.description})
        return rows

    def fingerprint(self) -> str:
        """Changes whenever the features (and so the encoding) change; stored with every model. The
        skew hint is part of it (the MLP's scaler depends on it), the descriptions are not."""
        desc = [{k: v for k, v in d.items() if k not in ("description", "unit")}
                | {"skewed": getattr(self.by_name[d["name"]], "skewed", False)} for d in self.describe()]
        blob = json.dumps(desc, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


class Encoder:
    """Model inputs: numeric features in schema order, then one column per category (one-hot).
    The same encoding serves training (from a DataFrame) and scoring (from request records)."""

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self.encoded_names: tuple[str, ...] = tuple(f.name for f in schema.numeric) + tuple(
            f"{f.name}={c}" for f in schema.categorical for c in f.categories
        )
        self.skewed_columns: tuple[int, ...] = tuple(i for i, f in enumerate(schema.numeric) if f.skewed)
        self.n_numeric = len(schema.numeric)
        self._numeric_names = [f.name for f in schema.numeric]
        self._cat_offsets: dict[str, int] = {}
        offset = self.n_numeric
        for f in schema.categorical:
            self._cat_offsets[f.name] = offset
            offset += len(f.categories)
        self._cat_index: dict[str, dict[str, int]] = {
            f.name: {c: i for i, c in enumerate(f.categories)} for f in schema.categorical}
        # the feature each encoded column belongs to (importance sums one-hot columns back)
        self.source_feature: tuple[str, ...] = tuple(n.split("=")[0] if "=" in n and i >= self.n_numeric else n
                                                     for i, n in enumerate(self.encoded_names))

    def encode_frame(self, df: pd.DataFrame) -> np.ndarray:
        out = np.zeros((len(df), len(self.encoded_names)), dtype=np.float32)
        for i, name in enumerate(self._numeric_names):
            out[:, i] = df[name].to_numpy(dtype=np.float32)
        rows = np.arange(len(df))
        for c in self.schema.categorical:
            codes = pd.Categorical(df[c.name], categories=c.categories).codes
            if (codes < 0).any():
                bad = df[c.name].iloc[int(np.argmax(codes < 0))]
                raise SchemaError(c.name, f"value {bad!r} is not a known category")
            out[rows, self._cat_offsets[c.name] + codes] = 1.0
        return out

    def encode_records(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Fast path for validated request records (a few to a few hundred rows)."""
        out = np.zeros((len(records), len(self.encoded_names)), dtype=np.float32)
        n = self.n_numeric
        numeric_names = self._numeric_names
        for r, rec in enumerate(records):
            out[r, :n] = [rec[name] for name in numeric_names]
            for name, index in self._cat_index.items():
                out[r, self._cat_offsets[name] + index[rec[name]]] = 1.0
        return out



def _field_type(f: Feature) -> Any:
    if isinstance(f, CategoricalFeature):
        return Annotated[Literal[f.categories], Field(description=f"{f.description}; one of {', '.join(f.categories)}")]
    base = int if f.integer else float
    unit = f" [{f.unit}]" if f.unit else ""
    # strict: "12.5" (a string) or true are wrong types, not numbers to coerce
    return Annotated[
        base,
        Field(ge=f.min, le=f.max, strict=True, allow_inf_nan=False,
              description=f"{f.description}{unit}, {f.min:g} to {f.max:g}"),
    ]


def _raise_first(column: str, bad: np.ndarray, col: pd.Series, message: str) -> None:
    if bad.any():
        row = int(np.argmax(bad))
        raise SchemaError(column, f"value {col.iloc[row]!r} is {message}", row=row)


def active() -> Schema:
    """The schema of the project this process serves."""
    return _schema_of(project_file.active_path())


@lru_cache(maxsize=8)
def _schema_of(path: Any) -> Schema:
    return Schema.from_project(project_file.active())
