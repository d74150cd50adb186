"""Tests healmesh.features: encoding records and frames, for each bundled example."""

import numpy as np

from healmesh import features


def test_encode_records_matches_encode_frame(example):
    df = example.rows(500, seed=21)
    records = example.records(500, seed=21)
    assert np.array_equal(features.encode_records(records), features.encode_frame(df))
    # the module functions serve the active project: the example's own encoder
    assert np.array_equal(features.encode_frame(df), example.schema.encoder.encode_frame(df))


def test_encoding_shape_is_numeric_then_one_column_per_category(example):
    s = example.schema
    enc = s.encoder
    X = enc.encode_frame(example.rows(200, seed=22))
    assert X.shape == (200, len(enc.encoded_names))
    assert len(enc.encoded_names) == len(s.numeric) + sum(len(f.categories) for f in s.categorical)
    assert enc.encoded_names[:enc.n_numeric] == tuple(f.name for f in s.numeric)


def test_numeric_columns_hold_the_values(example):
    s = example.schema
    df = example.rows(200, seed=23)
    X = s.encoder.encode_frame(df)
    for i, f in enumerate(s.numeric):
        assert np.array_equal(X[:, i], df[f.name].to_numpy(dtype=np.float32))


def test_categories_are_one_hot(example):
    f = example.first("categorical")
    enc = example.schema.encoder
    df = example.rows(200, seed=24)
    X = enc.encode_frame(df)
    block = [i for i, n in enumerate(enc.encoded_names) if enc.source_feature[i] == f.name and i >= enc.n_numeric]
    assert len(block) == len(f.categories)
    assert set(np.unique(X[:, block])) <= {0.0, 1.0}
    assert (X[:, block].sum(axis=1) == 1.0).all()
    chosen = [enc.encoded_names[block[j]].split("=", 1)[1] for j in X[:, block].argmax(axis=1)]
    assert chosen == list(df[f.name])
