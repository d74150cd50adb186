"""Tests healmesh.rules: the fallback rule scorer, for each bundled example: the fraud example's
rules as its file writes them, the weather example's as training distils them (it writes none)."""

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from healmesh import rules, schema
from healmesh.data import generate
from healmesh.models.distil import distil
from healmesh.rules import RuleSet
from healmesh.settings import get_settings

_DISTILLED: dict[str, str] = {}


@pytest.fixture
def served_rules(example, tmp_path):
    """``rules.active()`` of the example: its own rules, or the ones distilled from its data and
    saved where training saves them (a private HEALMESH_HOME)."""
    if example.project.fallback.rules:
        rs = rules.active()
        assert rs.origin == "project"
        yield rs
        return
    fingerprint = example.schema.fingerprint()
    if fingerprint not in _DISTILLED:
        _DISTILLED[fingerprint] = RuleSet.from_spec(distil(example.rows(3_000, seed=0), example.schema)).to_json()
    path = rules.distilled_path(tmp_path, fingerprint)
    path.parent.mkdir(parents=True)
    path.write_text(_DISTILLED[fingerprint])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HEALMESH_HOME", str(tmp_path))
        get_settings.cache_clear()
        rs = rules.active()
        assert rs.origin == "distilled" and rs.rules
        yield rs
    get_settings.cache_clear()


def test_rules_score_records_and_frame_agree(example, served_rules):
    df = example.rows(1_000, seed=21)
    assert np.allclose(served_rules.score_records(example.records(1_000, seed=21)), served_rules.score_frame(df))


def test_rules_rank_positives_above_negatives(example, served_rules):
    df = example.rows(3_000, seed=21)
    p = served_rules.score_frame(df)
    y = df[example.schema.label].to_numpy()
    assert p[y == 1].mean() > p[y == 0].mean()
    assert roc_auc_score(y, p) > 0.75


def test_fraud_rules_rank_fraud_above_legit(fraud_example, frame):
    # fraud-only: at a 1.5 % fraud rate the hand-written rules separate by a factor; the weather
    # example's rain rate (30 %) caps any ratio of means near 3
    p = rules.active().score_frame(frame)
    y = frame[schema.active().label].to_numpy()
    assert p[y == 1].mean() > 3 * p[y == 0].mean()


def test_rules_explain_names_exactly_the_rules_that_fire(example, served_rules):
    fired_somewhere = 0
    for rec in example.records(200, seed=7):
        named = [line.split(":", 1)[0] for line in served_rules.explain(rec)]
        # each rule alone, weight 1 and no bias, scores above 0.5 exactly when it fires
        expected = [r.name for r in served_rules.rules
                    if RuleSet((r.model_copy(update={"weight": 1.0}),), 0.0, 0.5).score_records([rec])[0] > 0.5]
        assert named == expected
        weights = sum(r.weight for r in served_rules.rules if r.name in named)
        assert math.isclose(served_rules.score_records([rec])[0], 1 / (1 + math.exp(-served_rules.bias - weights)))
        if served_rules.origin == "distilled":
            assert len(named) == 1, "distilled rules are a tree's leaves: exactly one fires"
        fired_somewhere += bool(named)
    assert fired_somewhere


def test_fraud_rules_explain_names_velocity_and_failed_auth_not_night(fraud_example):
    # fraud-only: named rules of the fraud example's file
    rec = generate(1, seed=1)[list(schema.active().feature_names)].iloc[0].to_dict()
    rec.update(txn_count_1h=9, failed_auth_24h=4, hour=12, amount_to_avg_7d=1.0)
    fired = rules.active().explain(rec)
    assert any(r.startswith("velocity_1h") for r in fired)
    assert any(r.startswith("failed_auth") for r in fired)
    assert not any(r.startswith("night") for r in fired)


def test_rules_only_name_schema_features(example, served_rules):
    assert served_rules.uses
    for name in served_rules.uses:
        assert name in example.schema.feature_names
