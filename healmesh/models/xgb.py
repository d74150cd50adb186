"""XGBoost (hist) adapter."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import xgboost as xgb

from healmesh import features, schema
from healmesh.models.bundle import BundleMeta
from healmesh.settings import get_settings

WEIGHTS = "model.ubj"

DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "binary:logistic",
    "eval_metric": "aucpr",
    "tree_method": "hist",
    "max_depth": 6,
    "eta": 0.08,
    "subsample": 0.9,
    "colsample_bytree": 0.8,
    "min_child_weight": 2.0,
    "lambda": 1.0,
}


class XGBoostModel:
    kind: ClassVar[str] = "xgboost"

    def __init__(self, booster: xgb.Booster) -> None:
        self.booster = booster

    @classmethod
    def fit(cls, X: np.ndarray, y: np.ndarray, X_val: np.ndarray, y_val: np.ndarray, *,
            params: Mapping[str, Any] | None = None, num_rounds: int = 400, seed: int = 0,
            nthread: int | None = None) -> XGBoostModel:
        p = {**DEFAULT_PARAMS, **(params or {}), "seed": seed}
        if nthread:
            p["nthread"] = nthread
        dtrain = xgb.DMatrix(X, label=y)
        dval = xgb.DMatrix(X_val, label=y_val)
        booster = xgb.train(p, dtrain, num_boost_round=num_rounds, evals=[(dval, "val")],
                            early_stopping_rounds=40, verbose_eval=False)
        # keep only the trees up to the best round
        best = booster[: booster.best_iteration + 1]
        return cls(best)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        # inplace_predict skips the DMatrix build: it matters for small serving batches
        return np.asarray(self.booster.inplace_predict(X), dtype=np.float64)

    def importance(self) -> dict[str, float]:
        """Share of the model's total gain per schema feature (one-hot columns summed back). Total, not
        mean, gain: mean gain per split inflates a feature split rarely, and totals add up over columns."""
        out = dict.fromkeys(schema.active().feature_names, 0.0)
        for column, gain in self.booster.get_score(importance_type="total_gain").items():
            out[features.active().encoded_names[int(column[1:])].split("=")[0]] += float(gain)  # type: ignore[arg-type]
        total = sum(out.values())
        return {k: v / total for k, v in out.items()} if total > 0 else out

    def save_weights(self, directory: Path) -> None:
        self.booster.save_model(str(directory / WEIGHTS))

    @classmethod
    def load_weights(cls, directory: Path, meta: BundleMeta) -> XGBoostModel:
        booster = xgb.Booster()
        booster.load_model(str(directory / WEIGHTS))
        booster.set_param({"nthread": get_settings().model_threads})
        return cls(booster)
