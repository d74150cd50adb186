"""Training against a real MLflow tracking server (and the default SQLite store)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from healmesh import bento_store, registry, schema
from healmesh.data import generate
from healmesh.settings import Settings
from healmesh.training import TrainConfig, train

pytestmark = pytest.mark.integration


def test_quality_floor_on_the_generators_holdout(trained):
    xgb, mlp, rules = trained.models["xgboost"].metrics, trained.models["mlp"].metrics, trained.rules_metrics
    print(f"\nholdout ROC AUC: xgboost {xgb['roc_auc']:.4f}, mlp {mlp['roc_auc']:.4f}, rules {rules['roc_auc']:.4f}; "
          f"PR AUC: xgboost {xgb['pr_auc']:.4f}, mlp {mlp['pr_auc']:.4f}, rules {rules['pr_auc']:.4f}")
    assert xgb["roc_auc"] >= 0.90
    assert xgb["roc_auc"] >= rules["roc_auc"] + 0.05
    assert xgb["pr_auc"] >= 2 * rules["pr_auc"]
    assert mlp["roc_auc"] >= 0.90
    for m in (xgb, mlp):
        assert set(m) >= {"roc_auc", "pr_auc", "f1", "brier", "threshold"}
        assert 0 < m["threshold"] < 1 and m["f1"] > 0.3 and m["brier"] < 0.02


def test_both_models_registered_with_champion_signature_and_reference(trained, settings: Settings):
    client = MlflowClient(settings.tracking_uri)
    for kind, name in (("xgboost", settings.xgb_registered_name), ("mlp", settings.mlp_registered_name)):
        result = trained.models[kind]
        assert result.champion and result.version == "1"
        mv = client.get_model_version_by_alias(name, "champion")
        assert str(mv.version) == "1"
        run = client.get_run(mv.run_id)
        assert run.data.metrics["holdout_roc_auc"] == pytest.approx(result.metrics["roc_auc"])
        assert "seed" in run.data.params and "rules_holdout_roc_auc" in run.data.metrics
        ref = registry.download_reference(settings, mv.run_id)
        assert list(ref.columns) == list(schema.active().feature_names) + [schema.active().label]
        assert len(ref) == 5_000 and 0 < ref[schema.active().label].mean() < 0.05
        import mlflow

        info = mlflow.models.get_model_info(f"models:/{name}/1")
        assert [c.name for c in info.signature.inputs.inputs] == list(schema.active().feature_names)
        model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
        sample = generate(200, seed=99)
        probs = np.asarray(model.predict(sample[list(schema.active().feature_names)]))
        assert probs.shape == (200,) and ((probs >= 0) & (probs <= 1)).all()
        y = sample[schema.active().label].to_numpy()
        assert probs[y == 1].mean() > probs[y == 0].mean()


def test_bentoml_store_carries_both_models(trained):
    import bentoml

    for kind, name in (("xgboost", bento_store.XGB_BENTO_MODEL), ("mlp", bento_store.MLP_BENTO_MODEL)):
        stored = bento_store.describe(bentoml.models.get(f"{name}:latest"))
        assert stored.registry_version == trained.models[kind].version
        assert (stored.path / "meta.json").exists()


def test_a_second_training_does_not_move_champion_unless_promoted(trained, settings: Settings):
    small = generate(15_000, seed=5)
    report = train(small, settings, TrainConfig(seed=5, mlp_epochs=2, save_to_bentoml=False))
    assert report.models["xgboost"].version == "2" and not report.models["xgboost"].champion
    assert registry.version_by_alias(settings, settings.xgb_registered_name, "champion").version == "1"


def test_training_refuses_one_class_data(settings: Settings):
    df = generate(2_000, seed=1)
    df[schema.active().label] = 0
    with pytest.raises(ValueError, match="needs both classes of .is_fraud."):
        train(df, settings, TrainConfig(register=False, save_to_bentoml=False))


def test_default_store_is_local_sqlite(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    local = Settings(home=tmp_path / "home")
    assert local.tracking_uri == f"sqlite:///{tmp_path / 'home' / 'mlflow' / 'mlflow.db'}"
    report = train(generate(8_000, seed=2), local, TrainConfig(mlp_epochs=1, save_to_bentoml=False))
    assert report.models["xgboost"].champion
    assert (tmp_path / "home" / "mlflow" / "mlflow.db").exists()
    assert any((tmp_path / "home" / "mlflow" / "artifacts").rglob("meta.json"))
    assert registry.version_by_alias(local, local.xgb_registered_name, "champion").version == "1"
    assert isinstance(registry.download_reference(local, report.models["xgboost"].run_id), pd.DataFrame)


def test_up_trains_when_the_registry_answers_without_a_champion(trained, tmp_path, monkeypatch):
    """Built-in models in the BentoML store are not enough when a registry answers: the
    lifecycle judges against the registry's champion, so `healmesh up` must train first."""
    from healmesh.ops import stack

    s = Settings()
    assert stack.models_available(s)  # the session's MLflow server has champions
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    MlflowClient(empty).search_registered_models()  # creates an empty store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", empty)
    assert bento_store.builtin_reference(bento_store.XGB_BENTO_MODEL) is not None
    assert not stack.models_available(s)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # no registry answers
    assert stack.models_available(s)  # the scorers serve their built-in models


def test_an_imported_xgboost_model_becomes_champion_and_serves_its_own_predictions(settings: Settings, tmp_path):
    """`healmesh import-model`: a booster trained outside healmesh (plain xgboost on the project's encoded
    columns) is registered as champion over an existing one, predicts as it did, and the MLP is trained
    beside it. Registered names of its own: the session's champions stay where other tests expect them."""
    import xgboost as xgb

    from healmesh.errors import InvalidData

    own = settings.model_copy(update={"xgb_registered_name": "import-test-xgboost",
                                      "mlp_registered_name": "import-test-mlp"})
    S = schema.active()
    names = list(S.encoder.encoded_names)
    outside = generate(8_000, seed=12)
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 4, "eta": 0.2, "seed": 3},
                        xgb.DMatrix(S.encoder.encode_frame(outside), label=outside[S.label].to_numpy(),
                                    feature_names=names), num_boost_round=60)
    path = tmp_path / "theirs.ubj"
    booster.save_model(str(path))

    data = generate(12_000, seed=11)
    first = train(data, own, TrainConfig(seed=11, mlp_epochs=1, save_to_bentoml=False))
    assert first.models["xgboost"].champion and first.models["xgboost"].version == "1"
    report = train(data, own, TrainConfig(seed=11, mlp_epochs=1, save_to_bentoml=False, xgboost_model=path))

    client = MlflowClient(own.tracking_uri)
    for kind, name in (("xgboost", own.xgb_registered_name), ("mlp", own.mlp_registered_name)):
        result = report.models[kind]
        assert result.champion and result.version == "2"  # promoted over version 1
        champion = registry.version_by_alias(own, name, "champion")
        assert champion is not None and champion.version == "2"
        run = client.get_run(champion.run_id)
        assert run.data.tags["healmesh.trigger"] == "import"
        assert run.data.metrics["holdout_roc_auc"] == pytest.approx(result.metrics["roc_auc"])
    xgb_run = client.get_run(report.models["xgboost"].run_id)
    assert xgb_run.data.params["imported_from"] == "theirs.ubj" and "num_trees" not in xgb_run.data.params

    rows = generate(500, seed=99)
    bundle = registry.load_version(own, own.xgb_registered_name, "2")
    assert bundle.meta.params == {"imported_from": "theirs.ubj"} and bundle.meta.calibrator is not None
    assert 0 < bundle.meta.threshold < 1
    expected = booster.inplace_predict(S.encoder.encode_frame(rows)).astype(np.float64)
    np.testing.assert_allclose(bundle.predict_frame(rows), expected, rtol=0, atol=1e-7)
    assert report.models["xgboost"].metrics["roc_auc"] > 0.85
    mlp = registry.load_version(own, own.mlp_registered_name, "2")
    assert mlp.meta.kind == "mlp" and mlp.predict_frame(rows).shape == (500,)

    # a model on other columns is refused before anything is registered
    short = xgb.train({"objective": "binary:logistic"}, xgb.DMatrix(S.encoder.encode_frame(outside)[:, :-1],
                                                                     label=outside[S.label].to_numpy()), 2)
    short.save_model(str(tmp_path / "short.json"))
    with pytest.raises(InvalidData, match=f"takes {len(names) - 1} features"):
        train(data, own, TrainConfig(mlp_epochs=1, save_to_bentoml=False, xgboost_model=tmp_path / "short.json"))
    assert registry.version_by_alias(own, own.xgb_registered_name, "champion").version == "2"
