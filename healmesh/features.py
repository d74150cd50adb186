"""Model inputs of the project this process serves (``schema.Encoder`` does the work).

Numeric features in schema order, then one column per category (one-hot). The same
encoding serves training (from a DataFrame) and scoring (from request records).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from healmesh import schema
from healmesh.schema import Encoder

__all__ = ["Encoder", "active", "encode_frame", "encode_records", "schema_fingerprint"]


def active() -> Encoder:
    """The encoder of the project this process serves."""
    return schema.active().encoder


def encode_frame(df: pd.DataFrame) -> np.ndarray:
    return active().encode_frame(df)


def encode_records(records: Sequence[Mapping[str, Any]]) -> np.ndarray:
    return active().encode_records(records)


def schema_fingerprint() -> str:
    return schema.active().fingerprint()
