"""Tests healmesh.models.bundle: a saved bundle round trip and its schema guard."""

import numpy as np
import pytest

from healmesh import features, schema
from healmesh.models.bundle import IncompatibleBundle, load_bundle, save_bundle


def test_bundle_round_trip_and_schema_guard(tmp_path, frame):
    from healmesh.models.bundle import BundleMeta
    from healmesh.models.xgb import XGBoostModel

    X = features.encode_frame(frame)
    y = frame[schema.LABEL].to_numpy()
    model = XGBoostModel.fit(X, y, X, y, num_rounds=20)
    save_bundle(model, BundleMeta(kind="xgboost", threshold=0.3), tmp_path / "b")
    loaded = load_bundle(tmp_path / "b")
    assert np.allclose(loaded.predict_frame(frame), model.predict_proba(X))
    assert loaded.meta.threshold == 0.3
    meta = (tmp_path / "b" / "meta.json").read_text().replace(features.schema_fingerprint(), "0" * 16)
    (tmp_path / "b" / "meta.json").write_text(meta)
    with pytest.raises(IncompatibleBundle, match="another feature schema"):
        load_bundle(tmp_path / "b")
