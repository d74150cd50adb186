"""`healmesh init`: a draft project file from a data file.

``draft`` looks at every column of a table and guesses its feature type, range or categories,
the label's positive class and the feature names; every guess is kept as a sentence, and every
column it cannot type is named with the reason and left out (no silent coercion: a column with
gaps or mixed values is the user's to fix or declare). ``render_yaml`` writes the project with
the guesses as a comment header; ``run`` checks that the draft loads and accepts its own data
before it writes the file.
"""

from __future__ import annotations

import math
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from healmesh.errors import InvalidData
from healmesh.project import NAME, RESERVED

MAX_CATEGORIES = 50
# the share of the observed span added on each side of a numeric range
WIDEN = 0.25
# log_scale when the 99th percentile is over this many medians
SKEW_RATIO = 20.0
PROJECT_NAME = r"^[a-z0-9][a-z0-9-]{0,39}$"
POSITIVE_WORDS = frozenset({"1", "true", "yes"})
URI = re.compile(r"^[a-z][a-z0-9+.-]*:")


@dataclass(frozen=True)
class Untyped:
    column: str
    reason: str


@dataclass
class Draft:
    project: dict[str, Any]
    guesses: list[str] = field(default_factory=list)
    untyped: list[Untyped] = field(default_factory=list)


# --- one column ----------------------------------------------------------------------------


def _blank(col: pd.Series) -> np.ndarray:
    """Missing cells, and cells of only whitespace (a CSV's empty field, give or take spaces)."""
    missing = col.isna().to_numpy()
    if col.dtype == object or pd.api.types.is_string_dtype(col.dtype):
        missing = missing | col.astype("string").str.strip().eq("").fillna(True).to_numpy()
    return np.asarray(missing, dtype=bool)


def _numbers(col: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """The column parsed as the schema parses it (``pd.to_numeric``), and which cells are numbers."""
    if pd.api.types.is_bool_dtype(col.dtype):
        # True/False are two categories, not 1/0
        return np.zeros(len(col)), np.zeros(len(col), dtype=bool)
    arr = pd.to_numeric(col, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    return arr, np.isfinite(arr)


def _fmt(x: float) -> str:
    return f"{x:,.6g}"


def _round_out(lo: float, hi: float) -> tuple[float, float]:
    """``lo`` down and ``hi`` up to three significant digits of the span (a readable file)."""
    exp = math.floor(math.log10(hi - lo)) - 2
    step = 10.0 ** exp
    digits = max(0, -exp)
    return round(math.floor(lo / step) * step, digits), round(math.ceil(hi / step) * step, digits)


def _numeric_spec(arr: np.ndarray, column: str) -> tuple[dict[str, Any], list[str]]:
    integer = bool(np.all(arr == np.floor(arr)))
    lo, hi = float(arr.min()), float(arr.max())
    nonneg = lo >= 0
    pad = WIDEN * (hi - lo)
    wide_lo, wide_hi = (max(0.0, lo - pad) if nonneg else lo - pad), hi + pad
    spec: dict[str, Any] = {"type": "integer" if integer else "numeric"}
    if integer:
        spec["min"], spec["max"] = math.floor(wide_lo), math.ceil(wide_hi)
    else:
        spec["min"], spec["max"] = _round_out(wide_lo, wide_hi)
    clamp = ", clamped at 0 as no value is negative" if nonneg else ""
    guesses = [f"{column!r}: {spec['type']} (every cell is a{' whole' if integer else ''} number), seen "
               f"{_fmt(lo)} to {_fmt(hi)}; range set to [{_fmt(spec['min'])}, {_fmt(spec['max'])}], widened by "
               f"{WIDEN:.0%} of the span on each side{clamp}, so later data is not refused at once"]
    median, p99 = float(np.median(arr)), float(np.percentile(arr, 99))
    if nonneg and median > 0 and p99 > SKEW_RATIO * median:
        spec["log_scale"] = True
        guesses.append(f"{column!r}: log_scale: true (heavy right tail: the 99th percentile {_fmt(p99)} is "
                       f"{p99 / median:.0f}x the median {_fmt(median)})")
    return spec, guesses


def _type_column(col: pd.Series, column: str) -> tuple[dict[str, Any] | None, list[str], str | None]:
    """(the feature's type fields, the guesses) or (None, [], why it cannot be typed)."""
    n = len(col)
    blank = _blank(col)
    if blank.any():
        return None, [], f"{int(blank.sum())} of {n} cells are empty (the first in row {int(np.argmax(blank))})"
    if pd.api.types.is_datetime64_any_dtype(col.dtype) or pd.api.types.is_timedelta64_dtype(col.dtype):
        return None, [], "dates and times are not a feature type (derive numbers from them first)"
    arr, is_number = _numbers(col)
    if is_number.all():
        if len(np.unique(arr)) == 1:
            return None, [], f"one value only ({_fmt(arr[0])}): it tells a model nothing"
        spec, guesses = _numeric_spec(arr, column)
        return spec, guesses, None
    if is_number.any():
        row = int(np.argmax(~is_number))
        return None, [], (f"mixes numbers and other values ({int((~is_number).sum())} of {n} cells are not "
                          f"numbers, the first {col.iloc[row]!r} in row {row})")
    # as the schema reads a categorical column
    values = col.astype("string")
    distinct = sorted(values.unique())
    if len(distinct) == 1:
        return None, [], f"one value only ({distinct[0]!r}): it tells a model nothing"
    if len(distinct) > MAX_CATEGORIES:
        return None, [], (f"{len(distinct)} distinct strings (over {MAX_CATEGORIES}): "
                          "looks like an id or free text")
    shown = ", ".join(repr(v) for v in distinct[:8]) + (", ..." if len(distinct) > 8 else "")
    return ({"type": "categorical", "categories": [str(v) for v in distinct]},
            [f"{column!r}: categorical, {len(distinct)} values seen ({shown}); a value not seen here is refused"],
            None)


# --- names ---------------------------------------------------------------------------------


def feature_name(column: str, taken: set[str]) -> str:
    """A feature name for a data column whose name is not one (lower-case, other characters
    made underscores, ``f_`` before a digit), not among ``taken``."""
    base = re.sub(r"[^A-Za-z0-9_]", "_", column.lower()) or "f"
    if base[0].isdigit():
        base = f"f_{base}"
    name, n = base[:64], 1
    while name in taken:
        n += 1
        suffix = f"_{n}"
        name = base[:64 - len(suffix)] + suffix
    return name


def project_name(data_path: str) -> str:
    """A project name from the data file's name (``loans-2024`` from ``Loans 2024.csv.gz``)."""
    stem = Path(data_path.rsplit("/", 1)[-1]).name.split(".")[0]
    name = re.sub(r"[^a-z0-9-]+", "-", stem.lower()).strip("-")[:40].strip("-")
    return name or "project"


# --- the label -----------------------------------------------------------------------------


def _label_values(col: pd.Series) -> list[int | str]:
    """The label's cells as the project file writes them: ints when every cell is a whole number
    (as the schema parses it), else strings."""
    if pd.api.types.is_bool_dtype(col.dtype):
        return [int(v) for v in col]
    nums = pd.to_numeric(col, errors="coerce").to_numpy(dtype=float, na_value=np.nan)
    if np.isfinite(nums).all() and (nums == np.floor(nums)).all():
        return [int(v) for v in nums]
    return [str(v) for v in col.astype("string")]


def _as_label_value(given: str | int, values: list[int | str]) -> int | str:
    """``--positive`` in the type of the label's values (the command line gives a string)."""
    if isinstance(values[0], int):
        try:
            x = float(given)
        except ValueError:
            return str(given)
        return int(x) if math.isfinite(x) and x == math.floor(x) else str(given)
    return str(given)


def _label(frame: pd.DataFrame, label: str, positive: str | int | None) -> tuple[dict[str, Any], str]:
    col = frame[label]
    blank = _blank(col)
    if blank.any():
        raise InvalidData(f"label column {label!r}: {int(blank.sum())} of {len(col)} cells are empty "
                          f"(the first in row {int(np.argmax(blank))}); every row needs a label")
    cells = _label_values(col)
    counts = pd.Series(cells, dtype=object).value_counts()
    if len(counts) != 2:
        shown = ", ".join(repr(v) for v in sorted(counts.index, key=str)[:10])
        raise InvalidData(f"label column {label!r} must have exactly two distinct values, but has "
                          f"{len(counts)}: {shown}{', ...' if len(counts) > 10 else ''}")
    pair: list[int | str] = sorted(counts.index, key=str)
    if positive is not None:
        wanted = _as_label_value(positive, pair)
        if wanted not in pair:
            raise InvalidData(f"--positive {positive!r} is not a value of label column {label!r} "
                              f"(its values are {pair[0]!r} and {pair[1]!r})")
        pos, why = wanted, "as given with --positive"
    else:
        words = [v for v in pair if str(v).lower() in POSITIVE_WORDS]
        if len(words) == 1:
            pos, why = words[0], f"{words[0]!r} reads as yes"
        else:
            # the rarer class is usually the one to catch; a tie takes the first in sorted order
            pos = min(pair, key=lambda v: (int(counts[v]), str(v)))
            why = f"the less common value ({int(counts[pos])} of {len(col)} rows)"
    neg = pair[1] if pair[0] == pos else pair[0]
    share = int(counts[pos]) / len(col)
    guess = (f"label {label!r}: positive class {pos!r} ({why}; {share:.1%} of rows), negative {neg!r}"
             + ("" if positive is not None else "; pass --positive to choose the other"))
    return {"column": label, "positive": pos, "negative": neg}, guess


# --- the draft -----------------------------------------------------------------------------


def draft(frame: pd.DataFrame, *, label: str, positive: str | int | None = None, entity_key: str | None = None,
          name: str | None = None, data_path: str) -> Draft:
    """The project a table suggests: its features, label and data; see the module's docstring."""
    columns = [str(c) for c in frame.columns]
    if label not in columns:
        raise InvalidData(f"label column {label!r} is not in the data; its columns are: {', '.join(columns)}")
    if frame.empty:
        raise InvalidData(f"{data_path}: the table has no rows")
    if entity_key is not None:
        if entity_key not in columns:
            raise InvalidData(f"entity key column {entity_key!r} is not in the data; its columns are: "
                              f"{', '.join(columns)}")
        if entity_key == label:
            raise InvalidData(f"the entity key and the label are both {label!r}")
        if not re.fullmatch(NAME, entity_key):
            raise InvalidData(f"entity key {entity_key!r} is not a valid name (letters, digits and underscores, "
                              "not starting with a digit, at most 64)")
    if name is not None and not re.fullmatch(PROJECT_NAME, name):
        raise InvalidData(f"--name {name!r} is not a valid project name (lower-case letters, digits and dashes, "
                          "starting with a letter or digit, at most 40)")
    out = Draft(project={})
    label_spec, label_guess = _label(frame, label, positive)
    out.guesses.append(label_guess)
    # a derived name avoids every data column (renaming must not make two columns of one name)
    taken = set(columns) | RESERVED
    features: list[dict[str, Any]] = []
    for column in columns:
        if column in (label, entity_key):
            continue
        spec, guesses, why = _type_column(frame[column], column)
        if spec is None:
            out.untyped.append(Untyped(column, why or "cannot be typed"))
            continue
        if re.fullmatch(NAME, column) and column not in RESERVED:
            feature: dict[str, Any] = {"name": column}
        else:
            fname = feature_name(column, taken)
            taken.add(fname)
            feature = {"name": fname, "column": column}
            what = "a name the mesh writes itself" if column in RESERVED else "not a valid feature name"
            guesses.append(f"{column!r}: {what}; feature named {fname!r} with column: {column!r}")
        features.append(feature | spec)
        out.guesses.extend(guesses)
    if not features:
        reasons = "; ".join(f"{u.column!r}: {u.reason}" for u in out.untyped) or "no columns but the label"
        raise InvalidData(f"no column could be typed as a feature ({reasons})")
    pname = name or project_name(data_path)
    if name is None:
        out.guesses.insert(0, f"project name {pname!r}, from the data file's name; pass --name to choose")
    out.project = {"name": pname, "description": f"drafted by `healmesh init` from {data_path}",
                   "features": features, "label": label_spec}
    if entity_key is not None:
        out.project["entity_key"] = entity_key
    out.project["data"] = {"path": data_path}
    return out


def render_yaml(d: Draft) -> str:
    """The project file: a comment header listing every guess and every column left out, then the
    project as YAML."""
    import yaml

    lines = ["# A draft project file written by `healmesh init`. Check every guess below, then serve it",
             "# with HEALMESH_PROJECT=<this file>.", "#", "# Guesses:"]
    lines += [f"#   - {g}" for g in d.guesses]
    if d.untyped:
        lines += ["#", "# Columns left out (they could not be typed; fix the data or declare them by hand):"]
        lines += [f"#   - {u.column!r}: {u.reason}" for u in d.untyped]

    class Dumper(yaml.SafeDumper):
        """Block style, but a list of plain values on one line (``categories: [a, b]``)."""

    def seq(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
        flow = all(isinstance(v, str | int | float) for v in data)
        return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)

    Dumper.add_representer(list, seq)
    body = yaml.dump(d.project, Dumper=Dumper, sort_keys=False, allow_unicode=True, default_flow_style=False,
                     width=100)
    return "\n".join(lines) + "\n\n" + body


# --- the command ---------------------------------------------------------------------------


def data_path_for(data: str, out: Path) -> str:
    """The data file as the project file names it: relative to the file's folder where it can be
    (the project moves with its data), absolute otherwise; ``pkg:`` and other URIs unchanged."""
    if URI.match(data) and not re.match(r"^[A-Za-z]:[\\/]", data):
        return data
    target = Path(data).expanduser().resolve()
    try:
        return Path(os.path.relpath(target, out.expanduser().resolve().parent)).as_posix()
    except ValueError:  # another drive (Windows)
        return str(target)


def _write_atomically(out: Path, text: str, frame: pd.DataFrame) -> None:
    """Write ``text`` to ``out`` by way of a temp file beside it, once it loads as a project
    that accepts ``frame`` (a draft that would not serve its own data is never written)."""
    from healmesh import project
    from healmesh.schema import Schema

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would make the project file private
        # beside the output, so the relative data path resolves as it will from the file itself
        loaded = project.load(tmp)
        Schema.from_project(loaded).validate_raw(frame, require_label=True)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run(*, data: str, label: str, out: str | Path = "healmesh.yaml", positive: str | None = None,
        entity_key: str | None = None, name: str | None = None, force: bool = False) -> int:
    """`healmesh init`: 0 written, 1 the output exists (without --force); bad data raises ``InvalidData``."""
    from healmesh.data.files import read_table

    target = Path(out)
    if target.exists() and not force:
        print(f"healmesh init: {target} exists; pass --force to overwrite it", file=sys.stderr)
        return 1
    frame = read_table(data)
    d = draft(frame, label=label, positive=positive, entity_key=entity_key, name=name,
              data_path=data_path_for(data, target))
    _write_atomically(target, render_yaml(d), frame)
    err = sys.stderr
    print("guesses (check them):", file=err)
    for g in d.guesses:
        print(f"  - {g}", file=err)
    if d.untyped:
        print("left out (could not be typed):", file=err)
        for u in d.untyped:
            print(f"  - {u.column!r}: {u.reason}", file=err)
    print(f"wrote {target} ({len(d.project['features'])} features from {len(frame.columns)} columns)", file=err)
    return 0
