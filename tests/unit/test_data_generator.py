"""Tests examples.fraud.generator: the synthetic transactions and their drift knobs."""

import numpy as np
import pytest
from scipy import stats

from healmesh import schema
from healmesh.data import DriftSpec, generate
from healmesh.data.synthetic import generator_module

_fraud = generator_module()  # the fraud example's generator (the default project)
NEW_PATTERNS, ORIGINAL_PATTERNS, PATTERN = _fraud.NEW_PATTERNS, _fraud.ORIGINAL_PATTERNS, _fraud.PATTERN
validate_frame = schema.active().validate_frame

N = 40_000


@pytest.fixture(scope="module")
def base():
    return generate(N, seed=11)


def test_output_is_valid_and_seeded(base):
    validate_frame(base, require_label=True)
    again = generate(N, seed=11)
    assert base.equals(again)
    assert not base.equals(generate(N, seed=12))


def test_positive_rate_is_rare(base):
    assert 0.01 <= base[schema.active().label].mean() <= 0.03
    for rate in (0.01, 0.03):
        got = generate(N, seed=3, positive_rate=rate)[schema.active().label].mean()
        assert abs(got - rate) < 0.004


def test_marginals_look_real(base):
    amount = base["amount"]
    assert amount.mean() > 1.5 * amount.median()  # right-skewed
    by_hour = base["hour"].value_counts(normalize=True).sort_index()
    assert by_hour.loc[12:19].mean() > 4 * by_hour.loc[1:5].mean()  # daily cycle


def test_fraud_signal_is_spread_over_several_features(base):
    fraud, legit = base[base[schema.active().label] == 1], base[base[schema.active().label] == 0]
    moved = [f.name for f in schema.active().numeric
             if stats.ks_2samp(fraud[f.name], legit[f.name]).statistic > 0.15]
    assert len(moved) >= 5, moved
    # and no single feature separates the classes
    for f in schema.active().numeric:
        auc = stats.mannwhitneyu(fraud[f.name], legit[f.name]).statistic / (len(fraud) * len(legit))
        assert max(auc, 1 - auc) < 0.9, f.name
    assert set(fraud[PATTERN]) == set(ORIGINAL_PATTERNS)


@pytest.mark.parametrize("name,amount", [(f.name, 0.8) for f in schema.active().numeric]
                         + [(f.name, 0.5) for f in schema.active().categorical])
def test_each_covariate_knob_moves_only_its_feature(base, name, amount):
    shifted = generate(N, seed=11, drift=DriftSpec(covariate_shift={name: amount}))
    f = schema.active().feature(name)
    if isinstance(f, schema.CategoricalFeature):
        table = np.array([base[name].value_counts().reindex(f.categories, fill_value=0),
                          shifted[name].value_counts().reindex(f.categories, fill_value=0)])
        table = table[:, table.sum(axis=0) > 0]
        assert stats.chi2_contingency(table).pvalue < 1e-6
    else:
        assert stats.ks_2samp(base[name], shifted[name]).pvalue < 1e-6
    others = [n for n in schema.active().feature_names if n != name]
    assert base[others].equals(shifted[others])
    assert base[schema.active().label].equals(shifted[schema.active().label])


def test_concept_drift_changes_the_fraud_pattern_not_the_legit_traffic(base):
    drifted = generate(N, seed=11, drift=DriftSpec(concept_drift=1.0))
    assert set(drifted.loc[drifted[schema.active().label] == 1, PATTERN]) == set(NEW_PATTERNS)
    legit_base = base[base[schema.active().label] == 0]
    legit_drift = drifted[drifted[schema.active().label] == 0]
    assert legit_base[list(schema.active().feature_names)].equals(legit_drift[list(schema.active().feature_names)])
    fraud_base = base[base[schema.active().label] == 1]
    fraud_drift = drifted[drifted[schema.active().label] == 1]
    assert stats.ks_2samp(fraud_base["hour"], fraud_drift["hour"]).pvalue < 1e-6
    assert stats.ks_2samp(fraud_base["merchant_risk_score"], fraud_drift["merchant_risk_score"]).pvalue < 1e-6
    half = generate(N, seed=11, drift=DriftSpec(concept_drift=0.5))
    share_new = half.loc[half[schema.active().label] == 1, PATTERN].isin(list(NEW_PATTERNS)).mean()
    assert 0.4 < share_new < 0.6


def test_drift_spec_rejects_nonsense():
    with pytest.raises(ValueError, match="unknown feature 'amout'"):
        DriftSpec(covariate_shift={"amout": 1.0})
    with pytest.raises(ValueError, match="concept_drift must be in"):
        DriftSpec(concept_drift=1.5)
    with pytest.raises(ValueError, match="categorical"):
        DriftSpec(covariate_shift={"channel": 2.0})
