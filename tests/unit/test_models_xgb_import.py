"""Tests XGBoostModel.from_file: a booster trained outside healmesh, checked against the project's encoding."""

from __future__ import annotations

import numpy as np
import pytest
import xgboost as xgb

from healmesh import schema
from healmesh.data import generate
from healmesh.errors import InvalidData
from healmesh.models.xgb import XGBoostModel


@pytest.fixture(scope="module")
def rows():
    s = schema.active()
    frame = generate(2_000, seed=7)
    return s.encoder.encode_frame(frame), frame[s.label].to_numpy()


def _booster(X, y, objective: str = "binary:logistic", feature_names=None, rounds: int = 10) -> xgb.Booster:
    dtrain = xgb.DMatrix(X, label=y, feature_names=feature_names)
    return xgb.train({"objective": objective, "max_depth": 3, "seed": 1}, dtrain, num_boost_round=rounds)


@pytest.mark.parametrize("suffix", [".json", ".ubj"])
def test_a_saved_booster_loads_and_predicts_as_it_did(tmp_path, rows, suffix):
    X, y = rows
    booster = _booster(X, y)
    path = tmp_path / f"model{suffix}"
    booster.save_model(str(path))
    model = XGBoostModel.from_file(path, schema.active().encoder.encoded_names)
    assert model.kind == "xgboost"
    np.testing.assert_array_equal(model.predict_proba(X), booster.inplace_predict(X).astype(np.float64))


def test_a_booster_with_the_projects_feature_names_loads_and_serves_by_position(tmp_path, rows):
    X, y = rows
    names = list(schema.active().encoder.encoded_names)
    booster = _booster(X, y, feature_names=names)
    booster.save_model(str(tmp_path / "named.json"))
    model = XGBoostModel.from_file(tmp_path / "named.json", names)
    np.testing.assert_array_equal(model.predict_proba(X), booster.inplace_predict(X).astype(np.float64))
    importance = model.importance()  # the gain per schema feature, as for a booster healmesh trains
    assert set(importance) == set(schema.active().feature_names)
    assert sum(importance.values()) == pytest.approx(1.0)


def test_a_booster_on_another_number_of_columns_is_refused_naming_both_counts(tmp_path, rows):
    X, y = rows
    names = schema.active().encoder.encoded_names
    _booster(X[:, :-1], y).save_model(str(tmp_path / "short.ubj"))
    with pytest.raises(InvalidData) as err:
        XGBoostModel.from_file(tmp_path / "short.ubj", names)
    message = str(err.value)
    assert f"takes {len(names) - 1} features" in message and f"as {len(names)} columns" in message
    assert "numeric features in declared order" in message and "`feature=category`" in message


def test_a_booster_with_other_feature_names_is_refused_naming_the_first_difference(tmp_path, rows):
    X, y = rows
    names = list(schema.active().encoder.encoded_names)
    wrong = names.copy()
    wrong[2], wrong[3] = names[3], names[2]  # two columns swapped: same names, another order
    _booster(X, y, feature_names=wrong).save_model(str(tmp_path / "swapped.json"))
    with pytest.raises(InvalidData, match="feature 2 is named") as err:
        XGBoostModel.from_file(tmp_path / "swapped.json", names)
    assert repr(names[3]) in str(err.value) and f"column 2 is {names[2]!r}" in str(err.value)


def test_a_regression_booster_is_refused_by_its_objective(tmp_path, rows):
    X, y = rows
    _booster(X, y.astype(float), objective="reg:squarederror").save_model(str(tmp_path / "reg.json"))
    with pytest.raises(InvalidData, match=r"objective is 'reg:squarederror'.*binary:logistic"):
        XGBoostModel.from_file(tmp_path / "reg.json", schema.active().encoder.encoded_names)


def test_a_legacy_binary_or_missing_file_is_refused_clearly(tmp_path):
    names = schema.active().encoder.encoded_names
    legacy = tmp_path / "model.bin"
    legacy.write_bytes(b"binf" + bytes(60))  # the legacy binary format's header; XGBoost >= 3.1 reads none
    with pytest.raises(InvalidData, match="legacy binary format.*save_model"):
        XGBoostModel.from_file(legacy, names)
    with pytest.raises(FileNotFoundError):
        XGBoostModel.from_file(tmp_path / "absent.ubj", names)
