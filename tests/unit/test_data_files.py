"""Tests healmesh.data.files: loading a user's own transactions file."""

import numpy as np
import pytest

from healmesh.data import generate, load_transactions
from healmesh.schema import SchemaError


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_users_own_file_round_trips(tmp_path, suffix):
    df = generate(500, seed=8)
    path = tmp_path / f"tx{suffix}"
    df.to_csv(path, index=False) if suffix == ".csv" else df.to_parquet(path, index=False)
    loaded = load_transactions(path, require_label=True)
    assert len(loaded) == 500
    assert np.allclose(loaded["amount"], df["amount"])
    assert (loaded["channel"] == df["channel"]).all()


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_users_bad_file_names_column_and_first_bad_row(tmp_path, suffix):
    df = generate(100, seed=9)
    df.loc[41, "distance_from_home_km"] = -5.0
    path = tmp_path / f"bad{suffix}"
    df.to_csv(path, index=False) if suffix == ".csv" else df.to_parquet(path, index=False)
    with pytest.raises(SchemaError) as exc:
        load_transactions(path)
    assert (exc.value.column, exc.value.row) == ("distance_from_home_km", 41)


def test_users_file_missing_a_column(tmp_path):
    path = tmp_path / "short.csv"
    generate(10, seed=1).drop(columns=["card_type"]).to_csv(path, index=False)
    with pytest.raises(SchemaError, match="column 'card_type': missing column"):
        load_transactions(path)
