"""The exception tree (healmesh/errors.py) and the enums at the boundaries (what Lua, Redis and
JSON carry as plain strings and numbers)."""

from __future__ import annotations

import asyncio
import builtins
import importlib
import inspect
import json
import pkgutil
import re
from typing import Any

import httpx
import pytest

import healmesh
from healmesh import errors
from healmesh.control.state import DriftSummary, RolloutStatus, Shadow, parse_state
from healmesh.errors import HealmeshError, UnexpectedReply
from healmesh.gateway import api
from healmesh.gateway.feature_log import CORRECTION_CODES, FEEDBACK_CODES, LabelResult, label_result
from healmesh.policies import routing
from healmesh.policies.breaker import State
from healmesh.policies.canary import StageStatus
from healmesh.policies.drift_decision import DriftDecision

# exception classes defined in healmesh/ that need not derive from HealmeshError, with why
NOT_IN_THE_TREE: dict[str, str] = {}


def _exception_classes() -> dict[str, type[BaseException]]:
    """Every exception class defined in a module of the healmesh package (by name)."""
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(healmesh.__path__, "healmesh."):
        module = importlib.import_module(info.name)  # an import that fails here fails the test
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == module.__name__:
                assert name not in found or found[name] is obj, f"two exception classes named {name}"
                found[name] = obj
    return found


def _drawn_tree() -> dict[str, tuple[str | None, str | None]]:
    """The tree in errors.py's docstring: name -> (parent, the builtin base in brackets)."""
    lines = errors.__doc__.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "HealmeshError"
                 or line.strip().startswith("HealmeshError "))
    indent = len(lines[start]) - len(lines[start].lstrip())
    drawn: dict[str, tuple[str | None, str | None]] = {}
    parents: list[str] = []
    for line in lines[start:]:
        if not line.strip():
            break
        m = re.match(r"^([│├└─ ]*)(\w+)\s*(?:\((\w+)\))?", line[indent:])
        assert m, f"not a line of the tree: {line!r}"
        depth = len(m.group(1)) // 4
        parents[depth:] = [m.group(2)]
        drawn[m.group(2)] = (parents[depth - 1] if depth else None, m.group(3))
    return drawn


def test_every_exception_class_in_healmesh_derives_from_healmesh_error():
    outside = sorted(name for name, cls in _exception_classes().items()
                     if not issubclass(cls, HealmeshError) and name not in NOT_IN_THE_TREE)
    assert outside == [], f"not in the tree of healmesh/errors.py: {outside}"


def test_the_drawn_tree_is_the_class_tree():
    classes = {n: c for n, c in _exception_classes().items() if issubclass(c, HealmeshError)}
    drawn = _drawn_tree()
    assert sorted(set(drawn) - set(classes)) == [], "drawn in errors.py, but no such class"
    assert sorted(set(classes) - set(drawn)) == [], "classes under HealmeshError not drawn in errors.py"
    for name, (parent, builtin) in drawn.items():
        cls = classes[name]
        bases = {b.__name__ for b in cls.__bases__}
        if parent is None:
            assert cls is HealmeshError and bases == {"Exception"}
            continue
        assert parent in bases, f"{name} is drawn under {parent}, but its bases are {sorted(bases)}"
        direct_builtins = {b for b in bases if hasattr(builtins, b) and b != "Exception"}
        assert direct_builtins == ({builtin} if builtin else set()), \
            f"{name}: drawn with ({builtin}), but its builtin bases are {sorted(direct_builtins)}"


def test_second_bases_keep_the_old_except_clauses_working():
    from healmesh.control.state import ChangeConflict, ChangeRejected
    from healmesh.lifecycle.rollout import LeaseLost, RolloutFailed
    from healmesh.policies.routing import Weights, WeightsError
    from healmesh.schema import SchemaError
    from healmesh.serving.faults import FaultConfig

    assert issubclass(ChangeRejected, ValueError) and issubclass(WeightsError, ChangeRejected)
    assert issubclass(ChangeConflict, RuntimeError) and issubclass(SchemaError, ValueError)
    assert issubclass(LeaseLost, RolloutFailed) and issubclass(RolloutFailed, RuntimeError)
    with pytest.raises(errors.ConfigError, match="error_rate must be in"):
        FaultConfig(error_rate=1.5)
    with pytest.raises(ChangeRejected, match="unknown variant 'gpt'") as caught:
        Weights.parse({"gpt": 1.0})
    assert caught.value.field == "weights.gpt"


# --- the Lua scripts' answers -> LabelResult, once --------------------------------------------

@pytest.mark.parametrize(("code", "result"), [(1, LabelResult.STORED), (0, LabelResult.UNCHANGED),
                                              (-1, LabelResult.UNKNOWN), (-2, LabelResult.CONFLICT)])
def test_feedback_script_codes_map_to_label_results(code, result):
    assert label_result(code) is result
    assert label_result(str(code).encode()) is result  # a decoded-or-not Redis reply reads the same


@pytest.mark.parametrize(("code", "result"), [(1, LabelResult.CORRECTED), (0, LabelResult.UNCHANGED),
                                              (-1, LabelResult.UNKNOWN)])
def test_correction_script_codes_map_to_label_results(code, result):
    assert label_result(code, CORRECTION_CODES) is result


@pytest.mark.parametrize(("code", "codes"), [(2, FEEDBACK_CODES), (-3, FEEDBACK_CODES), (None, FEEDBACK_CODES),
                                             (b"OK", FEEDBACK_CODES), (-2, CORRECTION_CODES)])
def test_an_answer_the_script_never_gives_is_an_unexpected_reply_naming_it(code, codes):
    with pytest.raises(UnexpectedReply, match=re.escape(f"a label script answered {code!r}, not one of")):
        label_result(code, codes)


def test_the_label_results_are_the_strings_the_api_answers():
    assert [r.value for r in LabelResult] == ["stored", "unchanged", "unknown", "conflict", "expired", "corrected",
                                                 "stored_cold"]
    assert api.LABEL_STATUS == {LabelResult.UNKNOWN: 404, LabelResult.CONFLICT: 409, LabelResult.EXPIRED: 410}


# --- enums carry today's strings: Redis contents, JSON answers and metric labels do not change ---

def test_the_enum_values_are_the_strings_on_the_wire():
    assert list(routing.VARIANTS) == ["xgboost_stable", "xgboost_canary", "pytorch"]
    assert [s.value for s in RolloutStatus] == ["idle", "shadow", "running", "promoted", "rolled_back", "failed"]
    assert [s.value for s in State] == ["closed", "open", "half_open"]
    assert [d.value for d in DriftDecision] == ["drift", "drift_reported", "anomalous_traffic", "no_drift",
                                               "insufficient_data", "none"]
    assert [s.value for s in StageStatus] == ["pass", "fail", "wait"]
    assert json.dumps({routing.XGB_STABLE: State.OPEN}) == '{"xgboost_stable": "open"}'
    assert f"{RolloutStatus.ROLLED_BACK}" == "rolled_back"


def test_state_read_back_from_redis_holds_enums_not_strings():
    state = parse_state({"shadow": json.dumps({"enabled": True, "target": "xgboost_canary"})},
                         json.dumps({"decision": "drift", "window_size": 600}))
    assert state.shadow.target is routing.Variant.XGB_CANARY
    assert state.drift.decision is DriftDecision.DRIFT and DriftSummary().decision is DriftDecision.NONE
    broken = parse_state({}, json.dumps({"decision": "maybe"}))  # tolerant: a broken part keeps its default
    assert broken.drift.decision is DriftDecision.NONE
    with pytest.raises(ValueError, match="shadow target must be one of"):
        Shadow(target="fallback")


# --- the gateway API: one 503 for a store that did not answer ----------------------------------

class _Down:
    """A feature log and control store whose Redis is away."""

    async def label(self, *_: Any) -> Any:
        raise ConnectionError("redis://secret@10.0.0.1:6379 refused")

    async def audit(self, *_: Any) -> Any:
        raise TimeoutError


class _Core:
    feature_log = _Down()
    control = _Down()


def test_a_store_that_does_not_answer_is_one_503_with_retry_after(monkeypatch):
    monkeypatch.setattr(api, "current_core", lambda: _Core())

    async def calls() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api.build_app()), base_url="http://t") as c:
            return [await c.post("/feedback", json={"request_id": "0" * 32, "label": 1},
                                 headers={"Authorization": "Bearer test-labeller-token-0123"}),
                    await c.get("/admin/audit", headers={"Authorization": "Bearer test-admin-token-0123"})]

    feedback, audit = asyncio.run(calls())
    assert (feedback.status_code, feedback.headers["retry-after"]) == (503, "1"), feedback.text
    assert feedback.json() == {"detail": "the feature store is unavailable: ConnectionError"}  # no address leaks
    assert (audit.status_code, audit.json()) == (503, {"detail": "the control store is unavailable: TimeoutError"})
