"""A user's own transactions from CSV or Parquet, checked against the schema."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from healmesh.errors import InvalidData
from healmesh.schema import validate_frame


def load_transactions(path: str | Path, *, require_label: bool = False) -> pd.DataFrame:
    """Read ``path`` (.csv, .parquet or .pq) and validate it.

    Raises ``healmesh.schema.SchemaError`` naming the column and the first bad row
    (rows are counted from 0, the first data row, in file order).
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".csv":
        # categories stay strings; numbers are checked by validate_frame, not guessed here
        frame = pd.read_csv(p, dtype=str, keep_default_na=False, na_values=[""])
    elif suffix in (".parquet", ".pq"):
        frame = pd.read_parquet(p)
    else:
        raise InvalidData(f"{p}: unsupported file type {suffix!r}; use .csv or .parquet")
    return validate_frame(frame, require_label=require_label)
