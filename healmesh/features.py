"""Model inputs: the schema's features as a float32 matrix.

Numeric features in schema order, then one column per category (one-hot). The same
encoding serves training (from a DataFrame) and scoring (from request records).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from healmesh import schema

ENCODED_NAMES: tuple[str, ...] = tuple(f.name for f in schema.NUMERIC) + tuple(
    f"{f.name}={c}" for f in schema.CATEGORICAL for c in f.categories
)
SKEWED_COLUMNS: tuple[int, ...] = tuple(i for i, f in enumerate(schema.NUMERIC) if f.skewed)
N_NUMERIC = len(schema.NUMERIC)

_CAT_OFFSETS: dict[str, int] = {}
_offset = N_NUMERIC
for _f in schema.CATEGORICAL:
    _CAT_OFFSETS[_f.name] = _offset
    _offset += len(_f.categories)
_CAT_INDEX: dict[str, dict[str, int]] = {f.name: {c: i for i, c in enumerate(f.categories)} for f in schema.CATEGORICAL}


def schema_fingerprint() -> str:
    """Changes whenever the schema (and so the encoding) changes; stored with every model."""
    blob = json.dumps(schema.describe(), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def encode_frame(df: pd.DataFrame) -> np.ndarray:
    out = np.zeros((len(df), len(ENCODED_NAMES)), dtype=np.float32)
    for i, f in enumerate(schema.NUMERIC):
        out[:, i] = df[f.name].to_numpy(dtype=np.float32)
    rows = np.arange(len(df))
    for c in schema.CATEGORICAL:
        codes = pd.Categorical(df[c.name], categories=c.categories).codes
        if (codes < 0).any():
            bad = df[c.name].iloc[int(np.argmax(codes < 0))]
            raise schema.SchemaError(c.name, f"value {bad!r} is not a known category")
        out[rows, _CAT_OFFSETS[c.name] + codes] = 1.0
    return out


def encode_records(records: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """Fast path for validated request records (a few to a few hundred rows)."""
    out = np.zeros((len(records), len(ENCODED_NAMES)), dtype=np.float32)
    numeric_names = [f.name for f in schema.NUMERIC]
    for r, rec in enumerate(records):
        out[r, :N_NUMERIC] = [rec[name] for name in numeric_names]
        for name, index in _CAT_INDEX.items():
            out[r, _CAT_OFFSETS[name] + index[rec[name]]] = 1.0
    return out
