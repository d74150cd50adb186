"""The interpretable rule score: the fallback scorer's model and the gateway's last resort.

A rule is data (``healmesh.project.RuleSpec``): conditions on features, all of which must
hold, a weight and a reason. The score is ``sigmoid(bias + sum of fired weights)``. Plain
NumPy: no xgboost, no torch, no scikit-learn. The rules come from the project file; a project
that writes none serves the rules training distilled from its data (``lifecycle``'s
``distil``), saved beside the models and read here.
"""

from __future__ import annotations

import hashlib
import json
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from healmesh.errors import ConfigError
from healmesh.project import ConditionSpec, FallbackSpec, Project, RuleSpec

Columns = Mapping[str, np.ndarray]

MODEL_NAME = "rules"
DISTILLED_FILE = "fallback_rules.json"

_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq, "!=": operator.ne,
}


def _test(cond: ConditionSpec, cols: Columns) -> np.ndarray:
    col = cols[cond.feature]
    if cond.op == "in":
        return np.isin(col, list(cond.value))  # type: ignore[arg-type]
    if cond.op == "not_in":
        return ~np.isin(col, list(cond.value))  # type: ignore[arg-type]
    return np.asarray(_COMPARE[cond.op](col, cond.value), dtype=bool)


def _describe(cond: ConditionSpec) -> str:
    value = ", ".join(map(str, cond.value)) if isinstance(cond.value, tuple) else cond.value
    return f"{cond.feature} {cond.op.replace('_', ' ')} {value}"


@dataclass(frozen=True)
class RuleSet:
    rules: tuple[RuleSpec, ...]
    bias: float
    threshold: float
    # where the rules came from: "project" (written in the file) or "distilled"
    origin: str = "project"

    @classmethod
    def from_spec(cls, spec: FallbackSpec, origin: str = "project") -> RuleSet:
        return cls(spec.rules, spec.bias, spec.threshold, origin)

    @property
    def uses(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c.feature for r in self.rules for c in r.when))

    @property
    def version(self) -> str:
        """Changes with the rules: what answers and metrics name as the rules' model version."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:8]

    def _score(self, cols: Columns, n: int) -> np.ndarray:
        logit = np.full(n, self.bias)
        for rule in self.rules:
            fired = np.ones(n, dtype=bool)
            for cond in rule.when:
                fired &= _test(cond, cols)
            logit += rule.weight * fired.astype(float)
        return 1.0 / (1.0 + np.exp(-logit))

    def score_records(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        if not records:
            return np.zeros(0)
        cols = {name: np.array([r[name] for r in records]) for name in self.uses}
        return self._score(cols, len(records))

    def score_frame(self, df: pd.DataFrame) -> np.ndarray:
        return self._score({name: df[name].to_numpy() for name in self.uses}, len(df))

    def explain(self, record: Mapping[str, Any]) -> list[str]:
        """The rules that fire for one row, in plain words."""
        cols = {name: np.array([record[name]]) for name in self.uses}
        out = []
        for r in self.rules:
            if all(bool(_test(c, cols)[0]) for c in r.when):
                out.append(f"{r.name}: {r.why or ' and '.join(_describe(c) for c in r.when)}")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"bias": self.bias, "threshold": self.threshold,
                "rules": [r.model_dump(mode="json") for r in self.rules]}

    def to_json(self) -> str:
        return json.dumps({**self.to_dict(), "origin": self.origin}, indent=2)

    @classmethod
    def from_json(cls, text: str, project: Project) -> RuleSet:
        """Rules saved by training, checked against ``project`` as if written in its file."""
        raw = json.loads(text)
        raw.pop("origin", None)
        fallback = FallbackSpec.model_validate(raw)
        checked = project.model_copy(update={"fallback": fallback})
        type(project).model_validate(checked.model_dump() | {"base_dir": project.base_dir})
        return cls.from_spec(fallback, origin="distilled")


def distilled_path(home: Path, fingerprint: str) -> Path:
    """Where training saves the rules it distilled for a schema (one file per schema)."""
    return home / "rules" / f"{fingerprint}-{DISTILLED_FILE}"


def for_project(project: Project, home: Path, fingerprint: str) -> RuleSet:
    """The rules a project serves: its own, else the ones training distilled for its schema."""
    if project.fallback.rules:
        return RuleSet.from_spec(project.fallback)
    path = distilled_path(home, fingerprint)
    try:
        return RuleSet.from_json(path.read_text(), project)
    except FileNotFoundError:
        raise ConfigError(
            f"project {project.name!r} writes no fallback rules and none were distilled yet ({path} is "
            f"missing): run `healmesh train` (or `make up`), which distils them from the training data"
        ) from None


def active() -> RuleSet:
    """The rules of the project this process serves."""
    return _active(_key())


def _key() -> tuple[Any, ...]:
    from healmesh import project, schema
    from healmesh.settings import get_settings

    return project.active_path(), get_settings().home.resolve(), schema.active().fingerprint()


_CACHE: dict[tuple[Any, ...], RuleSet] = {}


def _active(key: tuple[Any, ...]) -> RuleSet:
    if key not in _CACHE:
        from healmesh import project

        _CACHE[key] = for_project(project.active(), key[1], key[2])
    return _CACHE[key]
