"""`healmesh train`: XGBoost and the PyTorch MLP on the same split, logged and registered.

One call: split (stratified train / validation / holdout), fit both models, choose each
model's threshold on validation, report holdout metrics next to the fallback rules, log
params, metrics, the model (signature + input example) and a reference sample to MLflow,
register both, give the first versions the ``champion`` alias, and save each bundle in the
BentoML model store.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from healmesh import bento_store, features, registry, rules, schema
from healmesh.evaluation import choose_threshold, classification_metrics
from healmesh.models.bundle import BundleMeta, save_bundle
from healmesh.settings import Settings

Progress = Callable[[str], None]

PIP_REQUIREMENTS = ["xgboost==3.2.0", "torch==2.13.0", "pandas<3", "numpy", "scikit-learn"]


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    holdout_share: float = 0.2
    val_share: float = 0.15
    reference_rows: int = 5_000
    mlp_epochs: int = 30
    register: bool = True
    save_to_bentoml: bool = True
    # move `champion` to the new versions even when a champion exists
    promote: bool = False
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class ModelResult:
    kind: str
    metrics: dict[str, float]
    registered_name: str | None = None
    version: str | None = None
    run_id: str | None = None
    bento_tag: str | None = None
    champion: bool = False


@dataclass
class TrainReport:
    rows: int
    positive_rate: float
    models: dict[str, ModelResult]
    rules_metrics: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "positive_rate": self.positive_rate,
            "rules": self.rules_metrics,
            "models": {k: vars(v) for k, v in self.models.items()},
        }


@dataclass(frozen=True)
class Split:
    train: pd.DataFrame
    val: pd.DataFrame
    holdout: pd.DataFrame


def split(df: pd.DataFrame, config: TrainConfig) -> Split:
    rest, holdout = train_test_split(df, test_size=config.holdout_share, stratify=df[schema.LABEL],
                                     random_state=config.seed)
    val_of_rest = config.val_share / (1.0 - config.holdout_share)
    train, val = train_test_split(rest, test_size=val_of_rest, stratify=rest[schema.LABEL],
                                  random_state=config.seed + 1)
    return Split(train.reset_index(drop=True), val.reset_index(drop=True), holdout.reset_index(drop=True))


def fit_models(data: Split, config: TrainConfig, settings: Settings, progress: Progress) -> dict[str, tuple[Any, BundleMeta]]:
    from healmesh.models.mlp import MLPModel
    from healmesh.models.xgb import XGBoostModel

    X, y = features.encode_frame(data.train), data.train[schema.LABEL].to_numpy()
    Xv, yv = features.encode_frame(data.val), data.val[schema.LABEL].to_numpy()
    out: dict[str, tuple[Any, BundleMeta]] = {}

    progress("fit xgboost")
    xgbm = XGBoostModel.fit(X, y, Xv, yv, seed=config.seed)
    out["xgboost"] = (xgbm, BundleMeta(kind="xgboost", threshold=choose_threshold(yv, xgbm.predict_proba(Xv)),
                                       params={"num_trees": xgbm.booster.num_boosted_rounds()}))
    progress("fit mlp")
    mlp = MLPModel.fit(X, y, Xv, yv, seed=config.seed, epochs=config.mlp_epochs, device=settings.torch_device)
    meta = BundleMeta(kind="mlp", threshold=choose_threshold(yv, mlp.predict_proba(Xv)),
                      params={"hidden": mlp.hidden, "dropout": mlp.dropout, "epochs": config.mlp_epochs})
    out["mlp"] = (mlp, mlp.with_meta(meta))
    return out


def train(df: pd.DataFrame, settings: Settings, config: TrainConfig = TrainConfig(),
          progress: Progress = lambda _: None) -> TrainReport:
    """Train, evaluate and (unless told not to) log, register and store both models."""
    df = schema.validate_frame(df, require_label=True)
    if df[schema.LABEL].nunique() < 2:
        raise ValueError("training data needs both fraudulent and legitimate rows")
    progress("split")
    data = split(df, config)
    fitted = fit_models(data, config, settings, progress)

    progress("evaluate")
    y_hold = data.holdout[schema.LABEL].to_numpy()
    X_hold = features.encode_frame(data.holdout)
    rules_metrics = classification_metrics(y_hold, rules.score_frame(data.holdout), rules.THRESHOLD)
    results: dict[str, ModelResult] = {}
    for kind, (model, meta) in fitted.items():
        metrics = classification_metrics(y_hold, model.predict_proba(X_hold), meta.threshold)
        fitted[kind] = (model, replace(meta, metrics=metrics))
        results[kind] = ModelResult(kind=kind, metrics=metrics)

    if config.register or config.save_to_bentoml:
        with tempfile.TemporaryDirectory(prefix="healmesh-bundles-") as tmp:
            for kind, (model, meta) in fitted.items():
                bundle_dir = save_bundle(model, meta, Path(tmp) / kind)
                if config.register:
                    progress(f"log {kind} to mlflow")
                    _log_and_register(kind, bundle_dir, meta, data, rules_metrics, config, settings, results[kind])
                if config.save_to_bentoml:
                    progress(f"save {kind} to bentoml")
                    results[kind].bento_tag = bento_store.save(
                        _bento_name(kind), bundle_dir, registry_version=results[kind].version, kind=kind)
    return TrainReport(rows=len(df), positive_rate=float(df[schema.LABEL].mean()), models=results,
                       rules_metrics=rules_metrics)


def registered_name(kind: str, settings: Settings) -> str:
    return settings.xgb_registered_name if kind == "xgboost" else settings.mlp_registered_name


def _bento_name(kind: str) -> str:
    return bento_store.XGB_BENTO_MODEL if kind == "xgboost" else bento_store.MLP_BENTO_MODEL


def reference_sample(data: Split, rows: int, seed: int) -> pd.DataFrame:
    """What the drift monitor compares live traffic with: a sample of the training data."""
    train = data.train
    take = min(rows, len(train))
    return train.sample(n=take, random_state=seed)[list(schema.FEATURE_NAMES) + [schema.LABEL]].reset_index(drop=True)


def _log_and_register(kind: str, bundle_dir: Path, meta: BundleMeta, data: Split, rules_metrics: dict[str, float],
                      config: TrainConfig, settings: Settings, result: ModelResult) -> None:
    import mlflow
    from mlflow.models import infer_signature

    experiment_id = registry.ensure_experiment(settings)
    name = registered_name(kind, settings)
    example = data.holdout[list(schema.FEATURE_NAMES)].head(5)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"train-{kind}") as run:
        mlflow.set_tags({"healmesh.kind": kind, "healmesh.schema": meta.schema_fingerprint, **config.tags})
        mlflow.log_params({"seed": config.seed, "train_rows": len(data.train), "val_rows": len(data.val),
                           "holdout_rows": len(data.holdout), **{k: json.dumps(v) if isinstance(v, list) else v
                                                                for k, v in meta.params.items()}})
        mlflow.log_metrics({f"holdout_{k}": v for k, v in meta.metrics.items()})
        mlflow.log_metrics({f"rules_holdout_{k}": v for k, v in rules_metrics.items()})
        with tempfile.TemporaryDirectory() as tmp:
            ref_path = Path(tmp) / "reference.parquet"
            reference_sample(data, config.reference_rows, config.seed).to_parquet(ref_path, index=False)
            mlflow.log_artifact(str(ref_path), artifact_path="reference")
        with warnings.catch_warnings():
            # "integer columns cannot represent missing values": the schema never allows missing ones
            warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
            signature = infer_signature(example, np.zeros(len(example)))
        info = mlflow.pyfunc.log_model(
            name="model", loader_module="healmesh.models.bundle", data_path=str(bundle_dir),
            signature=signature, input_example=example, pip_requirements=PIP_REQUIREMENTS,
        )
        result.run_id = run.info.run_id
    mv = mlflow.register_model(info.model_uri, name, tags={"healmesh.kind": kind})
    result.registered_name, result.version = name, str(mv.version)
    current = registry.version_by_alias(settings, name, settings.champion_alias)
    if current is None or config.promote:
        registry.set_alias(settings, name, settings.champion_alias, result.version)
        result.champion = True
