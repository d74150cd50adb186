"""Generated data for a project that declares a generator (``data.generator`` in its file).

The generator is the project's own Python file with ``generate(n, *, seed, drift, **options)``
returning the features, the label (0/1) and, where the project has one, the entity key; it may
name drift scenarios in ``SCENARIOS`` (``healmesh demo drift --kind NAME``). A project with a
data file instead has no generator: it rehearses drift with ``healmesh replay``.
"""

from __future__ import annotations

import importlib.util
import sys
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd

from healmesh.data.drift_spec import NO_DRIFT, DriftSpec
from healmesh.errors import ConfigError


def generator_module() -> ModuleType:
    from healmesh import project

    p = project.active()
    if p.data.generator is None:
        raise ConfigError(f"project {p.name!r} declares no data.generator: it trains on {p.data.path}; "
                          "send its own later data with `healmesh replay --data FILE`")
    return _load(Path(p.resolve(p.data.generator)))


@lru_cache(maxsize=4)
def _load(path: Path) -> ModuleType:
    name = f"healmesh_project_generator_{abs(hash(path))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{path}: cannot load the project's generator")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look their module up here
    try:
        spec.loader.exec_module(module)
    except FileNotFoundError:
        raise ConfigError(f"{path}: the project's generator file does not exist") from None
    if not callable(getattr(module, "generate", None)):
        raise ConfigError(f"{path}: a generator must define generate(n, *, seed, drift)")
    return module


def generate(n: int, *, seed: int = 0, drift: DriftSpec = NO_DRIFT, **options: Any) -> pd.DataFrame:
    """``n`` rows from the project's generator."""
    frame: pd.DataFrame = generator_module().generate(n, seed=seed, drift=drift, **options)
    return frame


def scenarios() -> dict[str, DriftSpec]:
    """The drift scenarios the project's generator names (empty when it names none)."""
    return dict(getattr(generator_module(), "SCENARIOS", {}))
