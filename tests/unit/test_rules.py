"""Tests healmesh.rules: the fallback rule scorer."""

import numpy as np

from healmesh import rules, schema
from healmesh.data import generate


def test_rules_score_records_and_frame_agree(frame):
    records = frame[list(schema.active().feature_names)].to_dict("records")
    assert np.allclose(rules.active().score_records(records), rules.active().score_frame(frame))


def test_rules_rank_fraud_above_legit(frame):
    p = rules.active().score_frame(frame)
    y = frame[schema.active().label].to_numpy()
    assert p[y == 1].mean() > 3 * p[y == 0].mean()


def test_rules_explain_names_the_rules_that_fire():
    rec = generate(1, seed=1)[list(schema.active().feature_names)].iloc[0].to_dict()
    rec.update(txn_count_1h=9, failed_auth_24h=4, hour=12, amount_to_avg_7d=1.0)
    fired = rules.active().explain(rec)
    assert any(r.startswith("velocity_1h") for r in fired)
    assert any(r.startswith("failed_auth") for r in fired)
    assert not any(r.startswith("night") for r in fired)


def test_rules_only_name_schema_features():
    for name in rules.active().uses:
        assert name in schema.active().feature_names
