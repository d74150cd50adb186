"""Fixtures shared by unit tests of several modules."""

import pytest

from healmesh.data import generate


@pytest.fixture(scope="session")
def frame():
    """3,000 generated transactions (seed 21): read-only input for the features, rules and bundle tests."""
    return generate(3_000, seed=21)
