"""Tests healmesh.models.bundle: a saved bundle round trip and its schema guard."""

import numpy as np
import pytest

from healmesh import features, schema
from healmesh.models.bundle import IncompatibleBundle, load_bundle, save_bundle


def test_bundle_round_trip_and_schema_guard(tmp_path, frame):
    from healmesh.models.bundle import BundleMeta
    from healmesh.models.xgb import XGBoostModel

    X = features.encode_frame(frame)
    y = frame[schema.active().label].to_numpy()
    model = XGBoostModel.fit(X, y, X, y, num_rounds=20)
    save_bundle(model, BundleMeta(kind="xgboost", threshold=0.3), tmp_path / "b")
    loaded = load_bundle(tmp_path / "b")
    assert np.allclose(loaded.predict_frame(frame), model.predict_proba(X))
    assert loaded.meta.threshold == 0.3
    meta = (tmp_path / "b" / "meta.json").read_text().replace(features.schema_fingerprint(), "0" * 16)
    (tmp_path / "b" / "meta.json").write_text(meta)
    with pytest.raises(IncompatibleBundle, match="another feature schema"):
        load_bundle(tmp_path / "b")


def test_a_trained_bundle_carries_its_calibrator_fitted_on_validation_rows(tmp_path, frame):
    """CBPE reads a version's calibrated probabilities: training fits the calibrator on the validation
    rows (not the rows the trees were fitted on) and the bundle keeps it; an old bundle has none."""
    from dataclasses import replace

    from healmesh.models.bundle import BundleMeta
    from healmesh.training import TrainConfig, fit_xgboost, split

    data = split(frame, TrainConfig(seed=3))
    model, meta = fit_xgboost(data.train, data.val, 3)
    assert meta.calibrator is not None and meta.calibrator["kind"] == "isotonic"
    bundle = load_bundle(save_bundle(model, meta, tmp_path / "b"))
    cal = bundle.calibrator()
    scores = bundle.predict_frame(data.val)
    calibrated = cal.apply(scores)
    # isotonic on the validation rows: the calibrated probabilities sum to about the fraud there (not
    # exactly: applied by interpolation between block centres; 11.0 for 10 frauds here)
    assert calibrated.sum() == pytest.approx(data.val[schema.active().label].sum(), abs=2.5)
    assert np.all(np.diff(cal.apply(np.sort(scores))) >= 0)
    old = load_bundle(save_bundle(model, replace(meta, calibrator=None), tmp_path / "old"))
    assert old.calibrator() is None and BundleMeta.from_json(old.meta.to_json()).calibrator is None


def test_a_bundle_of_one_project_is_refused_by_another_and_loads_again_under_its_own(tmp_path, frame, monkeypatch):
    """A version carries its schema: trained while the fraud example was served, it is refused once the
    weather project is (the features differ, each named), and loads again with the fraud project back."""
    from healmesh import project
    from healmesh.models.bundle import BundleMeta
    from healmesh.models.xgb import XGBoostModel

    fraud_file = project.REPO_ROOT / "examples" / "fraud" / "healmesh.yaml"
    weather_file = project.REPO_ROOT / "examples" / "weather" / "healmesh.yaml"
    monkeypatch.setenv(project.ENV_VAR, str(fraud_file))
    fraud = schema.active()
    X = features.encode_frame(frame)
    model = XGBoostModel.fit(X, frame[fraud.label].to_numpy(), X, frame[fraud.label].to_numpy(), num_rounds=10)
    saved = save_bundle(model, BundleMeta(kind="xgboost", threshold=0.4), tmp_path / "fraud-bundle")

    monkeypatch.setenv(project.ENV_VAR, str(weather_file))
    weather = schema.active()
    assert weather.fingerprint() != fraud.fingerprint() and "temperature" in weather.feature_names
    with pytest.raises(IncompatibleBundle) as refused:
        load_bundle(saved)
    message = str(refused.value)
    assert str(saved) in message and "another feature schema" in message
    assert str(weather_file) in message, message  # the project file it was checked against
    assert f"fingerprint {fraud.fingerprint()}" in message and weather.fingerprint() in message
    lacks = message.split("it lacks ", 1)[1].split(";", 1)[0]
    assert set(lacks.split(", ")) == set(weather.feature_names), message
    has = message.split("it has ", 1)[1].split(", which the project does not", 1)[0]
    assert set(has.split(", ")) == set(fraud.feature_names), message

    monkeypatch.setenv(project.ENV_VAR, str(fraud_file))
    loaded = load_bundle(saved)
    assert loaded.meta.schema_fingerprint == fraud.fingerprint()
    assert np.allclose(loaded.predict_frame(frame), model.predict_proba(X))
