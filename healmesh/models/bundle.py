"""The model bundle: a directory with ``meta.json`` and the framework's native weights.

The same bundle is logged to MLflow (as a pyfunc model whose loader is this module),
stored in the BentoML model store and loaded by the scorers: one format, no pickles.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import pandas as pd

from healmesh import features
from healmesh.errors import HealmeshError
from healmesh.policies.estimation import Calibrator

META_FILE = "meta.json"


@dataclass(frozen=True)
class BundleMeta:
    kind: str  # "xgboost" or "mlp"
    threshold: float
    schema_fingerprint: str = field(default_factory=features.schema_fingerprint)
    encoded_features: tuple[str, ...] = field(default_factory=lambda: features.active().encoded_names)
    # the features the version was trained on, as ``Schema.describe()`` gives them: a version
    # carries its schema, and a scorer refuses one whose schema is not the project's
    schema: tuple[Mapping[str, Any], ...] = field(default_factory=lambda: tuple(_active_schema().describe()))
    created_at: float = field(default_factory=time.time)
    params: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
    # framework-specific state the weights need (e.g. the MLP's scaler and layer sizes)
    extra: Mapping[str, Any] = field(default_factory=dict)
    # scores -> calibrated probabilities, fitted on the validation rows (``policies.estimation.
    # Calibrator.to_dict``): what performance estimation before labels (CBPE) reads; None in bundles
    # trained before it existed
    calibrator: Mapping[str, Any] | None = None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> BundleMeta:
        raw = json.loads(text)
        raw["encoded_features"] = tuple(raw["encoded_features"])
        raw["schema"] = tuple(raw.get("schema", ()))
        return cls(**raw)


class BinaryModel(Protocol):
    kind: ClassVar[str]

    def predict_proba(self, X: np.ndarray) -> np.ndarray: ...

    def save_weights(self, directory: Path) -> None: ...

    @classmethod
    def load_weights(cls, directory: Path, meta: BundleMeta) -> BinaryModel: ...


class IncompatibleBundle(HealmeshError, RuntimeError):
    """A saved model bundle this code cannot serve (another schema or format)."""


def _active_schema() -> Any:
    from healmesh import schema

    return schema.active()


@dataclass(frozen=True)
class Bundle:
    model: BinaryModel
    meta: BundleMeta
    # the project's encoder, taken once (the fingerprint check made sure it is the version's)
    encoder: features.Encoder = field(default_factory=features.active)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict_proba(X), dtype=np.float64)

    def predict_frame(self, df: pd.DataFrame) -> np.ndarray:
        return self.predict_proba(self.encoder.encode_frame(df))

    def predict_records(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        return self.predict_proba(self.encoder.encode_records(records))

    def calibrator(self) -> Calibrator | None:
        return Calibrator.from_dict(dict(self.meta.calibrator)) if self.meta.calibrator else None


def _adapter(kind: str) -> type[BinaryModel]:
    # deferred imports: loading an XGBoost bundle must not import torch, and vice versa
    if kind == "xgboost":
        from healmesh.models.xgb import XGBoostModel

        return XGBoostModel
    if kind == "mlp":
        from healmesh.models.mlp import MLPModel

        return MLPModel
    raise IncompatibleBundle(f"unknown model kind {kind!r}")


def save_bundle(model: BinaryModel, meta: BundleMeta, directory: str | Path) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    model.save_weights(d)
    (d / META_FILE).write_text(meta.to_json())
    return d


def load_bundle(directory: str | Path) -> Bundle:
    d = Path(directory)
    meta_path = d / META_FILE
    if not meta_path.exists():
        raise IncompatibleBundle(f"{d} is not a healmesh model bundle (no {META_FILE})")
    meta = BundleMeta.from_json(meta_path.read_text())
    mine = _active_schema()
    if meta.schema_fingerprint != mine.fingerprint():
        raise IncompatibleBundle(schema_mismatch(str(d), meta, mine))
    return Bundle(model=_adapter(meta.kind).load_weights(d, meta), meta=meta)


def schema_mismatch(what: str, meta: BundleMeta, mine: Any) -> str:
    """Why a version trained on another schema is refused, naming the features that differ."""
    from healmesh import project

    theirs = {str(f["name"]) for f in meta.schema}
    ours = set(mine.feature_names)
    detail = ""
    if theirs:
        missing, extra = sorted(ours - theirs), sorted(theirs - ours)
        parts = ([f"it lacks {', '.join(missing)}"] if missing else []) + (
            [f"it has {', '.join(extra)}, which the project does not"] if extra else [])
        detail = "; " + "; ".join(parts) if parts else "; the same names with other types, ranges or categories"
    return (f"{what} was trained on another feature schema (fingerprint {meta.schema_fingerprint}, the project "
            f"{project.active_path()} has {mine.fingerprint()}){detail}: retrain it on this project, or serve "
            f"it with the project it was trained on")


def find_bundle(root: str | Path) -> Path:
    """The bundle directory somewhere under ``root`` (an MLflow or BentoML model directory)."""
    root = Path(root)
    hits = sorted(p.parent for p in root.rglob(META_FILE))
    if not hits:
        raise IncompatibleBundle(f"no healmesh model bundle under {root}")
    return hits[0]


class _PyfuncModel:
    """What ``mlflow.pyfunc.load_model`` returns for a healmesh model: positive-class probabilities."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle

    def predict(self, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> np.ndarray:
        from healmesh import schema

        return self.bundle.predict_frame(schema.active().validate_frame(pd.DataFrame(model_input)))


def _load_pyfunc(data_path: str) -> _PyfuncModel:
    """MLflow pyfunc loader hook (``loader_module='healmesh.models.bundle'``)."""
    return _PyfuncModel(load_bundle(find_bundle(data_path)))
