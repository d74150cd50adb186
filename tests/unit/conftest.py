"""Fixtures shared by unit tests of several modules."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from healmesh import project as project_file
from healmesh.data import generate
from healmesh.data.files import training_frame
from healmesh.project import Project
from healmesh.schema import CategoricalFeature, Feature, NumericFeature, Schema
from healmesh.settings import get_settings

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"
EXAMPLE_FILES = {"fraud": EXAMPLES_DIR / "fraud" / "healmesh.yaml",
                 "weather": EXAMPLES_DIR / "weather" / "healmesh.yaml"}


@pytest.fixture(scope="session")
def frame():
    """3,000 generated transactions (seed 21): read-only input for the features, rules and bundle tests."""
    return generate(3_000, seed=21)


@lru_cache(maxsize=4)
def _file_rows(path: Path) -> pd.DataFrame:
    # a data project's training slice, read once per session (callers sample a copy of it);
    # called while the project is active: the file is validated against the active schema
    return training_frame(project_file.load(path))


@dataclass(frozen=True)
class Example:
    """One bundled example project, served (``HEALMESH_PROJECT``) while the test runs."""

    id: str
    path: Path
    project: Project
    schema: Schema

    def rows(self, n: int, seed: int = 0) -> pd.DataFrame:
        """``n`` validated, labelled rows (label 0/1), numbered 0..n-1: the generator's for a project
        with one, else a seeded sample of its data file's training slice."""
        if self.project.data.generator is not None:
            return self.schema.validate_frame(generate(n, seed=seed), require_label=True)
        return _file_rows(self.path).sample(n, random_state=seed).reset_index(drop=True)

    def records(self, n: int, seed: int = 0) -> list[dict[str, Any]]:
        """The same rows as request bodies: the features and, where the project has one, the entity
        key, as plain Python values."""
        columns = list(self.schema.feature_names) + ([self.schema.entity_key] if self.schema.entity_key else [])
        return [{k: (v.item() if hasattr(v, "item") else v) for k, v in rec.items()}
                for rec in self.rows(n, seed=seed)[columns].to_dict("records")]

    def first(self, kind: str) -> Feature:
        """The first feature of a kind: "numeric" (a real number), "integer" or "categorical"; skips
        the test where the project has none (the weather example has neither integers nor categories)."""
        for f in self.schema.features:
            if kind == "categorical" and isinstance(f, CategoricalFeature):
                return f
            if isinstance(f, NumericFeature) and kind == ("integer" if f.integer else "numeric"):
                return f
        pytest.skip(f"{self.id} has no {kind} feature")


def _serve(example_id: str) -> Iterator[Example]:
    path = EXAMPLE_FILES[example_id]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(project_file.ENV_VAR, str(path))
        get_settings.cache_clear()
        p = project_file.load(path)
        yield Example(example_id, path, p, Schema.from_project(p))
    # the variable is restored by now: settings read under the example are dropped with it
    get_settings.cache_clear()


@pytest.fixture(params=sorted(EXAMPLE_FILES), ids=sorted(EXAMPLE_FILES))
def example(request: pytest.FixtureRequest) -> Iterator[Example]:
    """Each bundled example in turn (ids "fraud", "weather"), served for the test: ``schema.active()``,
    ``rules.active()`` and the settings follow it; everything is restored afterwards."""
    yield from _serve(request.param)


@pytest.fixture
def fraud_example() -> Iterator[Example]:
    """The fraud example only, served: for tests of its own content (its rules, its feature counts)."""
    yield from _serve("fraud")
