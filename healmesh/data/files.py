"""A user's own data from CSV or Parquet, checked against the project's schema.

A path is a local file or ``pkg:<package>/<path>``:
a file a Python package ships (found without importing the package).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from healmesh import schema
from healmesh.errors import InvalidData

if TYPE_CHECKING:
    from healmesh.project import Project

PKG = "pkg:"


def locate(path: str | Path) -> Path:
    """A local path for ``path``; ``pkg:`` names a file inside an installed package."""
    text = str(path)
    if not text.startswith(PKG):
        return Path(text)
    package, _, inner = text[len(PKG):].partition("/")
    spec = importlib.util.find_spec(package) if package else None
    if spec is None or not spec.submodule_search_locations:
        raise InvalidData(f"{text}: no installed package {package!r} (pip install it, or give a file path)")
    found = Path(next(iter(spec.submodule_search_locations))) / inner
    if not found.is_file():
        raise InvalidData(f"{text}: package {package!r} has no file {inner!r}")
    return found


def read_table(path: str | Path) -> pd.DataFrame:
    """The raw table of a CSV or Parquet file, nothing checked yet (CSV cells stay strings: numbers
    are checked by the schema, not guessed here)."""
    p = locate(path)
    suffixes = [s.lower() for s in p.suffixes]
    try:
        if suffixes[-1:] == [".csv"] or suffixes[-2:] in ([".csv", ".gz"], [".csv", ".zip"]):
            return pd.read_csv(p, dtype=str, keep_default_na=False, na_values=[""])
        if suffixes[-1:] in ([".parquet"], [".pq"]):
            return pd.read_parquet(p)
    except FileNotFoundError:
        raise InvalidData(f"{path}: no such file") from None
    raise InvalidData(f"{path}: unsupported file type {''.join(suffixes[-1:])!r}; use .csv or .parquet")


def select_rows(frame: pd.DataFrame, rows: tuple[int, int | None] | None) -> pd.DataFrame:
    if rows is None:
        return frame
    start, stop = rows
    if start >= len(frame):
        raise InvalidData(f"rows [{start}, {stop}) start past the end of the data ({len(frame)} rows)")
    return frame.iloc[start:stop].reset_index(drop=True)


def load_transactions(path: str | Path, *, require_label: bool = False,
                      rows: tuple[int, int | None] | None = None) -> pd.DataFrame:
    """Read ``path`` (.csv, .parquet or .pq) and validate it against the active schema.

    Raises ``healmesh.schema.SchemaError`` naming the column and the first bad row
    (rows are counted from 0, the first data row, in file order).
    """
    return schema.active().validate_raw(select_rows(read_table(path), rows), require_label=require_label)


def training_frame(project: Project, *, rows: int | None = None, seed: int = 0) -> pd.DataFrame:
    """The labelled data a project trains its first models on: its data file (the declared rows),
    or ``rows`` (default ``data.generated_rows``) from its generator."""
    if project.data.path is not None:
        return load_transactions(project.resolve(project.data.path), require_label=True, rows=project.data.rows)
    from healmesh.data.synthetic import generate

    return generate(rows or project.data.generated_rows, seed=seed)
