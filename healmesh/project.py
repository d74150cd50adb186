"""The user's model contract, read from their project file (floor 1).

A project file (YAML) declares what the mesh serves: the features (type, range or categories),
the label and its positive class, the optional entity key, the training data, the model settings,
the decision threshold, the fallback rules (as data) and any drift or gate settings that differ
from the defaults. ``HEALMESH_PROJECT`` names the file; without it the bundled fraud example
(``examples/fraud/healmesh.yaml``) is served. The file is validated here, once, with one message
naming the field at fault (``ProjectError``); nothing downstream re-checks it.
"""

from __future__ import annotations

import os
import re
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from healmesh.errors import ConfigError

ENV_VAR = "HEALMESH_PROJECT"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PROJECT = REPO_ROOT / "examples" / "fraud" / "healmesh.yaml"
# a feature name is a JSON key, a pydantic field, a Parquet column and a Prometheus label value:
# letters, digits and underscores keep it all four (a data column may be mapped with `column:`)
NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,63}$"
# names the mesh itself writes next to the features (feature log, archive, windows)
RESERVED = frozenset({"request_id", "probability", "label", "model", "model_version", "variant", "fallback",
                      "degraded", "latency_ms", "ts", "rows", "features", "shadow"})


class ProjectError(ConfigError):
    """A project file that cannot be served; names the file and the field at fault."""


class FeatureKind(StrEnum):
    NUMERIC = "numeric"
    INTEGER = "integer"
    CATEGORICAL = "categorical"


_STRICT = ConfigDict(extra="forbid", frozen=True)


class FeatureSpec(BaseModel):
    model_config = _STRICT

    name: Annotated[str, Field(pattern=NAME)]
    type: FeatureKind
    # the column of the data file, when it differs from the name (a name with spaces, say)
    column: str | None = None
    min: float | None = None
    max: float | None = None
    categories: tuple[str, ...] | None = None
    unit: str = ""
    description: str = ""
    # heavy right tail: models and the drift monitor treat it on a log scale
    log_scale: bool = False

    @model_validator(mode="after")
    def _fits_its_type(self) -> FeatureSpec:
        if self.type is FeatureKind.CATEGORICAL:
            if not self.categories:
                raise ValueError("a categorical feature needs categories (a non-empty list)")
            if len(set(self.categories)) != len(self.categories):
                raise ValueError("categories must be distinct")
            if self.min is not None or self.max is not None or self.log_scale:
                raise ValueError("a categorical feature takes categories, not min, max or log_scale")
            return self
        if self.categories is not None:
            raise ValueError(f"a {self.type} feature takes min and max, not categories")
        if self.min is None or self.max is None:
            raise ValueError(f"a {self.type} feature needs min and max")
        if not self.min < self.max:
            raise ValueError(f"min must be below max, but was min={self.min:g}, max={self.max:g}")
        if self.log_scale and self.min < 0:
            raise ValueError(f"log_scale needs min >= 0, but min was {self.min:g}")
        return self

    @property
    def source(self) -> str:
        return self.column or self.name


class LabelSpec(BaseModel):
    model_config = _STRICT

    column: str
    # the value of the column that is the positive class (1 in the mesh's answers)
    positive: int | str = 1
    # the other value; None: whatever the other value in the data is (there must be exactly one)
    negative: int | str | None = None
    description: str = ""

    @model_validator(mode="after")
    def _two_classes(self) -> LabelSpec:
        if self.negative is not None and self.negative == self.positive:
            raise ValueError("positive and negative must differ")
        return self


class DataSpec(BaseModel):
    model_config = _STRICT

    # a CSV or Parquet file (relative to the project file; no s3:// yet: copy it here), or
    # pkg:<package>/<path> for a file a Python package ships
    path: str | None = None
    # a Python file (relative to the project file) with generate(n, *, seed, drift): synthetic data
    generator: str | None = None
    # rows [start, stop) of the file to train on (None: all); for a generator, how many to make
    rows: tuple[int, int | None] | None = None
    generated_rows: int = Field(default=60_000, ge=100)

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        if (self.path is None) == (self.generator is None):
            raise ValueError("give exactly one of path (a data file) or generator (a Python file)")
        if self.rows is not None:
            start, stop = self.rows
            if start < 0 or (stop is not None and stop <= start):
                raise ValueError(f"rows must be [start, stop) with 0 <= start < stop, but was {list(self.rows)}")
        return self


class XGBoostSpec(BaseModel):
    model_config = _STRICT

    n_estimators: int = Field(default=400, ge=1, le=10_000)
    max_depth: int = Field(default=6, ge=1, le=20)
    learning_rate: float = Field(default=0.08, gt=0, le=1)


class MLPSpec(BaseModel):
    model_config = _STRICT

    hidden: tuple[int, ...] = (64, 32)
    dropout: float = Field(default=0.1, ge=0, lt=1)
    epochs: int = Field(default=30, ge=1, le=1_000)


class ModelsSpec(BaseModel):
    """The mesh serves one model of each kind (XGBoost stable/canary, the MLP beside it)."""

    model_config = _STRICT

    xgboost: XGBoostSpec = XGBoostSpec()
    mlp: MLPSpec = MLPSpec()


Op = Literal["<", "<=", ">", ">=", "==", "!=", "in", "not_in"]


class ConditionSpec(BaseModel):
    model_config = _STRICT

    feature: str
    op: Op
    value: float | str | tuple[float | str, ...]

    @model_validator(mode="after")
    def _value_fits_op(self) -> ConditionSpec:
        many = isinstance(self.value, tuple)
        if self.op in ("in", "not_in") and not many:
            raise ValueError(f"op {self.op!r} takes a list of values")
        if self.op not in ("in", "not_in") and many:
            raise ValueError(f"op {self.op!r} takes one value, not a list")
        return self


class RuleSpec(BaseModel):
    model_config = _STRICT

    name: Annotated[str, Field(pattern=NAME)]
    # every condition must hold for the rule to fire
    when: tuple[ConditionSpec, ...] = Field(min_length=1)
    weight: float
    why: str = ""


class FallbackSpec(BaseModel):
    """The rule score ``sigmoid(bias + sum of the fired rules' weights)``: the fallback scorer's
    model and the gateway's last resort. No rules: training distils them from the data."""

    model_config = _STRICT

    bias: float = 0.0
    threshold: float = Field(default=0.5, gt=0, lt=1)
    rules: tuple[RuleSpec, ...] = ()

    @field_validator("rules")
    @classmethod
    def _distinct(cls, rules: tuple[RuleSpec, ...]) -> tuple[RuleSpec, ...]:
        names = [r.name for r in rules]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"rule names must be distinct, but {', '.join(dup)} came twice")
        return rules


class Project(BaseModel):
    model_config = _STRICT

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,39}$")]
    description: str = ""
    features: tuple[FeatureSpec, ...] = Field(min_length=1)
    label: LabelSpec
    # optional on requests, used for sticky routing; never a model input
    entity_key: Annotated[str, Field(pattern=NAME)] | None = None
    data: DataSpec
    models: ModelsSpec = ModelsSpec()
    # the decision threshold: a number, or best_f1 (chosen on the validation split)
    threshold: float | Literal["best_f1"] = "best_f1"
    fallback: FallbackSpec = FallbackSpec()
    # overrides of settings.drift (DriftThresholds) and settings.retrain.gate (GateConfig); an
    # environment variable still wins over the file (checked by settings.check_project_overrides)
    drift: dict[str, Any] = Field(default_factory=dict)
    gate: dict[str, Any] = Field(default_factory=dict)
    # where the file was read from: relative paths inside it are relative to its folder
    base_dir: Path = Field(default=Path("."), exclude=True)
    source: Path = Field(default=Path("healmesh.yaml"), exclude=True)

    @field_validator("threshold")
    @classmethod
    def _threshold_in_range(cls, v: float | str) -> float | str:
        if isinstance(v, float) and not 0.0 < v < 1.0:
            raise ValueError(f"threshold must be in (0, 1) or best_f1, but was {v}")
        return v

    @model_validator(mode="after")
    def _names_agree(self) -> Project:
        names = [f.name for f in self.features]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"feature names must be distinct, but {', '.join(dup)} came twice")
        clash = sorted(set(names) & (RESERVED | {self.label.column, self.entity_key or ""}))
        if clash:
            raise ValueError(f"feature {clash[0]!r} clashes with the label, the entity key or a name the mesh "
                             f"writes itself ({', '.join(sorted(RESERVED))})")
        by_name = {f.name: f for f in self.features}
        for rule in self.fallback.rules:
            for cond in rule.when:
                f = by_name.get(cond.feature)
                if f is None:
                    raise ValueError(f"fallback rule {rule.name!r} names unknown feature {cond.feature!r}")
                _check_condition(rule.name, f, cond)
        return self

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    def resolve(self, relative: str) -> str:
        """A path written in the file, made absolute against the file's folder (URIs unchanged)."""
        if re.match(r"^[a-z][a-z0-9+.-]*:", relative) and not re.match(r"^[A-Za-z]:[\\/]", relative):
            return relative
        p = Path(relative)
        return str(p if p.is_absolute() else (self.base_dir / p).resolve())


def _check_condition(rule: str, f: FeatureSpec, cond: ConditionSpec) -> None:
    values = cond.value if isinstance(cond.value, tuple) else (cond.value,)
    if f.type is FeatureKind.CATEGORICAL:
        if cond.op not in ("==", "!=", "in", "not_in"):
            raise ValueError(f"fallback rule {rule!r}: {f.name!r} is categorical, so op {cond.op!r} is not allowed")
        unknown = [v for v in values if v not in (f.categories or ())]
        if unknown:
            raise ValueError(f"fallback rule {rule!r}: {unknown[0]!r} is not a category of {f.name!r}")
    elif any(isinstance(v, str) for v in values):
        raise ValueError(f"fallback rule {rule!r}: {f.name!r} is {f.type}, so its values must be numbers")


def _format_error(path: Path, err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(the file)"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{path}: {where}: {first['msg']}{more}"


def parse(raw: Any, *, path: Path) -> Project:
    """A project from the file's parsed YAML; ``ProjectError`` names the first field at fault."""
    if not isinstance(raw, dict):
        raise ProjectError(f"{path}: the file must hold a mapping (name, features, label, data, ...)")
    try:
        return Project.model_validate({**raw, "base_dir": path.resolve().parent, "source": path})
    except ValidationError as e:
        raise ProjectError(_format_error(path, e)) from None


def load(path: str | Path) -> Project:
    import yaml

    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ProjectError(f"{p}: cannot read the project file ({e.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ProjectError(f"{p}: not valid YAML: {e}") from None
    return parse(raw, path=p)


def active_path() -> Path:
    """The project file this process serves: ``HEALMESH_PROJECT``, else the fraud example."""
    return _resolve(os.environ.get(ENV_VAR, "").strip())


@lru_cache(maxsize=8)
def _resolve(raw: str) -> Path:
    # cached: scoring paths ask for the active schema per request, and resolve() is syscalls
    return Path(raw).expanduser().resolve() if raw else DEFAULT_PROJECT


def active() -> Project:
    """The project this process serves (read once per path; a test may point the variable elsewhere)."""
    return _load_cached(active_path())


@lru_cache(maxsize=8)
def _load_cached(path: Path) -> Project:
    return load(path)
