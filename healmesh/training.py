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

from healmesh import bento_store, features, project, registry, rules, schema
from healmesh.errors import InvalidData
from healmesh.evaluation import choose_threshold, classification_metrics
from healmesh.models.bundle import BundleMeta, save_bundle
from healmesh.policies.estimation import Calibrator
from healmesh.settings import Settings

Progress = Callable[[str], None]

PIP_REQUIREMENTS = ["xgboost==3.2.0", "torch==2.13.0", "pandas<3", "numpy", "scikit-learn"]


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    holdout_share: float = 0.2
    val_share: float = 0.15
    reference_rows: int = 5_000
    # None: the project file's (models.mlp.epochs)
    mlp_epochs: int | None = None
    register: bool = True
    save_to_bentoml: bool = True
    # move `champion` to the new versions even when a champion exists
    promote: bool = False
    tags: dict[str, str] = field(default_factory=dict)
    # a booster file saved elsewhere (`healmesh import-model`): used as the XGBoost model instead of
    # fitting one, tagged healmesh.trigger=import and promoted; the MLP is still trained
    xgboost_model: Path | None = None


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
    # "project": the file's own rules; "distilled": learnt from this training data
    rules_origin: str = "project"

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "positive_rate": self.positive_rate,
            "rules": self.rules_metrics,
            "rules_origin": self.rules_origin,
            "models": {k: vars(v) for k, v in self.models.items()},
        }


@dataclass(frozen=True)
class Split:
    train: pd.DataFrame
    val: pd.DataFrame
    holdout: pd.DataFrame


def split(df: pd.DataFrame, config: TrainConfig) -> Split:
    rest, holdout = train_test_split(df, test_size=config.holdout_share, stratify=df[schema.active().label],
                                     random_state=config.seed)
    val_of_rest = config.val_share / (1.0 - config.holdout_share)
    train, val = train_test_split(rest, test_size=val_of_rest, stratify=rest[schema.active().label],
                                  random_state=config.seed + 1)
    return Split(train.reset_index(drop=True), val.reset_index(drop=True), holdout.reset_index(drop=True))


def decision_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The project's decision threshold: the number its file gives, or the best F1 on ``(y, p)``."""
    fixed = project.active().threshold
    return choose_threshold(y, p) if fixed == "best_f1" else float(fixed)


def fit_xgboost(train: pd.DataFrame, val: pd.DataFrame, seed: int) -> tuple[Any, BundleMeta]:
    """XGBoost (hist) with early stopping on ``val``; its threshold is the project's (by default
    the best F1 on ``val``)."""
    from healmesh.models.xgb import XGBoostModel

    spec = project.active().models.xgboost
    label = schema.active().label
    Xv, yv = features.encode_frame(val), val[label].to_numpy()
    model = XGBoostModel.fit(features.encode_frame(train), train[label].to_numpy(), Xv, yv, seed=seed,
                             num_rounds=spec.n_estimators,
                             params={"max_depth": spec.max_depth, "eta": spec.learning_rate})
    pv = model.predict_proba(Xv)
    return model, BundleMeta(kind="xgboost", threshold=decision_threshold(yv, pv),
                             params={"num_trees": model.booster.num_boosted_rounds()},
                             calibrator=Calibrator.fit(yv, pv).to_dict())


def import_xgboost(path: Path, val: pd.DataFrame) -> tuple[Any, BundleMeta]:
    """A booster trained elsewhere (``XGBoostModel.from_file`` checks it takes the project's columns),
    with its threshold and calibrator chosen on ``val`` as for a fitted one."""
    from healmesh.models.xgb import XGBoostModel

    model = XGBoostModel.from_file(path, features.active().encoded_names)
    Xv, yv = features.encode_frame(val), val[schema.active().label].to_numpy()
    pv = model.predict_proba(Xv)
    return model, BundleMeta(kind="xgboost", threshold=decision_threshold(yv, pv),
                             params={"imported_from": Path(path).name},
                             calibrator=Calibrator.fit(yv, pv).to_dict())


def fit_models(data: Split, config: TrainConfig, settings: Settings,
               progress: Progress) -> dict[str, tuple[Any, BundleMeta]]:
    from healmesh.models.mlp import MLPModel

    out: dict[str, tuple[Any, BundleMeta]] = {}
    if config.xgboost_model is not None:
        progress("import xgboost")
        out["xgboost"] = import_xgboost(config.xgboost_model, data.val)
    else:
        progress("fit xgboost")
        out["xgboost"] = fit_xgboost(data.train, data.val, config.seed)
    progress("fit mlp")
    X, y = features.encode_frame(data.train), data.train[schema.active().label].to_numpy()
    Xv, yv = features.encode_frame(data.val), data.val[schema.active().label].to_numpy()
    spec = project.active().models.mlp
    epochs = config.mlp_epochs or spec.epochs
    mlp = MLPModel.fit(X, y, Xv, yv, seed=config.seed, epochs=epochs, hidden=spec.hidden, dropout=spec.dropout,
                       device=settings.torch_device)
    pv = mlp.predict_proba(Xv)
    meta = BundleMeta(kind="mlp", threshold=decision_threshold(yv, pv),
                      params={"hidden": mlp.hidden, "dropout": mlp.dropout, "epochs": epochs},
                      calibrator=Calibrator.fit(yv, pv).to_dict())
    out["mlp"] = (mlp, mlp.with_meta(meta))
    return out


def train(df: pd.DataFrame, settings: Settings, config: TrainConfig = TrainConfig(),
          progress: Progress = lambda _: None) -> TrainReport:
    """Train, evaluate and (unless told not to) log, register and store both models. With
    ``config.xgboost_model`` the XGBoost model is that file's (evaluated like a fitted one), the runs
    are tagged ``healmesh.trigger=import`` and both new versions become champion."""
    S = schema.active()
    if config.xgboost_model is not None:
        config = replace(config, promote=True, tags={**config.tags, "healmesh.trigger": "import"})
    df = S.validate_frame(df, require_label=True)
    if df[S.label].nunique() < 2:
        raise InvalidData(f"training data needs both classes of {S.label!r} (positive {S.positive!r}), "
                          f"but has only {df[S.label].iloc[0]}")
    progress("split")
    data = split(df, config)
    fitted = fit_models(data, config, settings, progress)  # first: a refused import writes no distilled rules
    ruleset = fallback_rules(data, config, settings)

    progress("evaluate")
    y_hold = data.holdout[S.label].to_numpy()
    X_hold = features.encode_frame(data.holdout)
    rules_metrics = classification_metrics(y_hold, ruleset.score_frame(data.holdout), ruleset.threshold)
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
                    _log_and_register(kind, bundle_dir, meta, data, rules_metrics, config, settings, results[kind],
                                      ruleset)
                if config.save_to_bentoml:
                    progress(f"save {kind} to bentoml")
                    results[kind].bento_tag = bento_store.save(
                        _bento_name(kind), bundle_dir, registry_version=results[kind].version, kind=kind)
    return TrainReport(rows=len(df), positive_rate=float(df[S.label].mean()), models=results,
                       rules_metrics={**rules_metrics, "rules": float(len(ruleset.rules))},
                       rules_origin=ruleset.origin)


def fallback_rules(data: Split, config: TrainConfig, settings: Settings) -> rules.RuleSet:
    """The project's own rules; a project that writes none gets rules distilled from the training
    split, saved where its fallback scorer and gateway read them (``rules.distilled_path``)."""
    from healmesh.models.distil import distil

    p, S = project.active(), schema.active()
    if p.fallback.rules:
        return rules.RuleSet.from_spec(p.fallback)
    spec = distil(data.train, S, seed=config.seed)
    ruleset = rules.RuleSet.from_spec(spec, origin="distilled")
    path = rules.distilled_path(settings.home, S.fingerprint())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(ruleset.to_json())
    tmp.replace(path)  # a reader sees the old file or the new one, never half of one
    return ruleset


def registered_name(kind: str, settings: Settings) -> str:
    return settings.xgb_registered_name if kind == "xgboost" else settings.mlp_registered_name


def _bento_name(kind: str) -> str:
    return bento_store.XGB_BENTO_MODEL if kind == "xgboost" else bento_store.MLP_BENTO_MODEL


def reference_sample(train: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    """What the drift monitor compares live traffic with: a sample of the training data."""
    take = min(rows, len(train))
    s = schema.active()
    return train.sample(n=take, random_state=seed)[list(s.feature_names) + [s.label]].reset_index(drop=True)


def _log_and_register(kind: str, bundle_dir: Path, meta: BundleMeta, data: Split, rules_metrics: dict[str, float],
                      config: TrainConfig, settings: Settings, result: ModelResult, ruleset: rules.RuleSet) -> None:
    params = {"seed": config.seed, "train_rows": len(data.train), "val_rows": len(data.val),
              "holdout_rows": len(data.holdout), **meta.params}
    metrics = {**{f"holdout_{k}": v for k, v in meta.metrics.items()},
               **{f"rules_holdout_{k}": v for k, v in rules_metrics.items()}}
    with tempfile.TemporaryDirectory() as tmp:
        rules_file = Path(tmp) / "rules.json"
        rules_file.write_text(ruleset.to_json())
        logged = log_model_run(settings, kind, bundle_dir, meta, run_name=f"train-{kind}", params=params,
                               metrics=metrics, tags={**config.tags, "healmesh.rules": ruleset.origin},
                               example=data.holdout,
                               reference=reference_sample(data.train, config.reference_rows, config.seed),
                               artifacts={"fallback": rules_file})
    result.run_id = logged.run_id
    result.registered_name, result.version = register(settings, kind, logged)
    current = registry.version_by_alias(settings, result.registered_name, settings.champion_alias)
    if current is None or config.promote:
        registry.set_alias(settings, result.registered_name, settings.champion_alias, result.version)
        result.champion = True


@dataclass(frozen=True)
class LoggedModel:
    run_id: str
    model_uri: str


def log_model_run(settings: Settings, kind: str, bundle_dir: Path, meta: BundleMeta, *, run_name: str,
                  params: dict[str, Any], metrics: dict[str, float], tags: dict[str, str], example: pd.DataFrame,
                  reference: pd.DataFrame, artifacts: dict[str, Path] | None = None) -> LoggedModel:
    """One MLflow run: params, metrics, tags, the reference sample, extra artifacts, and the model
    (pyfunc over the bundle, with a signature over the raw schema columns and an input example)."""
    import mlflow
    from mlflow.models import infer_signature

    experiment_id = registry.ensure_experiment(settings)
    example = example[list(schema.active().feature_names)].head(5)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name) as run:
        mlflow.set_tags({"healmesh.kind": kind, "healmesh.schema": meta.schema_fingerprint, **tags})
        mlflow.log_params({k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in params.items()})
        mlflow.log_metrics(metrics)
        with tempfile.TemporaryDirectory() as tmp:
            ref_path = Path(tmp) / "reference.parquet"
            reference.to_parquet(ref_path, index=False)
            mlflow.log_artifact(str(ref_path), artifact_path="reference")
        for folder, path in (artifacts or {}).items():
            if path.exists():
                mlflow.log_artifact(str(path), artifact_path=folder)
        with warnings.catch_warnings():
            # "integer columns cannot represent missing values": the schema never allows missing ones
            warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
            signature = infer_signature(example, np.zeros(len(example)))
        info = mlflow.pyfunc.log_model(
            name="model", loader_module="healmesh.models.bundle", data_path=str(bundle_dir),
            signature=signature, input_example=example, pip_requirements=PIP_REQUIREMENTS,
        )
        return LoggedModel(run_id=run.info.run_id, model_uri=info.model_uri)


def register(settings: Settings, kind: str, logged: LoggedModel, tags: dict[str, str] | None = None) -> tuple[str, str]:
    import mlflow

    registry.configure_mlflow(settings)
    name = registered_name(kind, settings)
    # the version names the schema it was trained on: `up` and the scorers compare it with the project's
    mv = mlflow.register_model(logged.model_uri, name, tags={"healmesh.kind": kind,
                                                             "healmesh.schema": features.schema_fingerprint(),
                                                             **(tags or {})})
    return name, str(mv.version)


def format_report(report: dict[str, Any]) -> str:
    """A ``TrainReport.to_dict()`` as the table `healmesh train` prints: holdout metrics per model."""
    lines = [f"trained on {report['rows']} rows ({report['positive_rate']:.2%} positive); holdout metrics "
             f"(rules: {report.get('rules_origin', 'project')}):",
             f"{'model':<10} {'ROC AUC':>8} {'PR AUC':>8} {'F1':>8} {'Brier':>8} {'threshold':>10}  registered"]
    rows = [("rules", report["rules"], None)] + [(k, v["metrics"], v) for k, v in report["models"].items()]
    for name, m, info in rows:
        reg = "" if info is None else (f"{info['registered_name']} v{info['version']}"
                                       + (" (champion)" if info["champion"] else "") if info["version"] else "-")
        lines.append(f"{name:<10} {m['roc_auc']:>8.4f} {m['pr_auc']:>8.4f} {m['f1']:>8.4f} {m['brier']:>8.4f} "
                     f"{m['threshold']:>10.4f}  {reg}")
    return "\n".join(lines)
