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
