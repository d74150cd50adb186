"""XGBoost (hist) adapter."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import xgboost as xgb

from healmesh import features, schema
from healmesh.errors import InvalidData
from healmesh.models.bundle import BundleMeta
from healmesh.settings import get_settings

WEIGHTS = "model.ubj"
# the one objective a model served here may have: it answers probabilities of the positive class
IMPORT_OBJECTIVE = "binary:logistic"

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

    @classmethod
    def from_file(cls, path: Path, encoded_names: Sequence[str]) -> XGBoostModel:
        """A booster an XGBoost user saved (``save_model``: ``.json`` or ``.ubj``), checked against the
        project's model inputs ``encoded_names``: as many features, the same names in the same order
        where the file has names, and the ``binary:logistic`` objective. A file saved in XGBoost's
        legacy binary format is refused by name: XGBoost 3.1 and later cannot read it."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no XGBoost model file at {path}")
        booster = xgb.Booster()
        try:
            booster.load_model(str(path))
        except xgb.core.XGBoostError as exc:
            with path.open("rb") as f:
                head = f.read(64).lstrip()
            if head[:1] != b"{":  # JSON and UBJSON both open with "{"; the legacy binary format does not
                raise InvalidData(
                    f"{path} is not a JSON or UBJSON XGBoost model (perhaps the legacy binary format, which "
                    f"XGBoost {xgb.__version__} cannot read): load it with XGBoost 3.0 or older and save it "
                    f"again with booster.save_model('model.ubj') (or 'model.json')") from exc
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InvalidData(f"{path} is not an XGBoost model XGBoost {xgb.__version__} can read: {first}") from exc
        objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
        if objective != IMPORT_OBJECTIVE:
            raise InvalidData(f"{path.name}: the model's objective is {objective!r}, but the mesh serves "
                              f"probabilities of the positive class: train it with objective={IMPORT_OBJECTIVE!r}")
        names = list(encoded_names)
        encoding = _encoding_help(names)
        if booster.num_features() != len(names):
            raise InvalidData(f"{path.name}: the model takes {booster.num_features()} features, but the project "
                              f"encodes its rows as {len(names)} columns; {encoding}")
        theirs = booster.feature_names
        if theirs:
            for i, (got, want) in enumerate(zip(theirs, names, strict=True)):
                if got != want:
                    raise InvalidData(f"{path.name}: the model's feature {i} is named {got!r}, but the project's "
                                      f"column {i} is {want!r}; {encoding}")
            # checked: from here on columns go by position, as in the boosters healmesh trains
            # (importance() reads the default names f0, f1, ...)
            booster.feature_names = None
        return cls(booster)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        # inplace_predict skips the DMatrix build: it matters for small serving batches
        return np.asarray(self.booster.inplace_predict(X), dtype=np.float64)

    def importance(self) -> dict[str, float]:
        """Share of the model's total gain per schema feature (one-hot columns summed back). Total, not
        mean, gain: mean gain per split inflates a feature split rarely, and totals add up over columns."""
        out = dict.fromkeys(schema.active().feature_names, 0.0)
        owner = features.active().source_feature  # each encoded column's feature
        for column, gain in self.booster.get_score(importance_type="total_gain").items():
            out[owner[int(column[1:])]] += float(gain)  # type: ignore[arg-type]
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


def _encoding_help(names: Sequence[str]) -> str:
    """How the project encodes a row, for a model trained elsewhere that must take the same columns."""
    limit = 60
    shown = ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")
    return ("the project's model inputs are its numeric features in declared order, then one column "
            "`feature=category` per category of each categorical feature (features and categories in "
            f"declared order): [{shown}]; schema.active().encoder.encode_frame(df) builds this matrix")
