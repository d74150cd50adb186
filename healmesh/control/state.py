"""The control state (routing weights, shadow mode, rollout, drift summary) as typed values, and
the rules every change obeys. Pure: parsing, checking and applying changes; the stores
(``store`` for the gateway, ``sync_store`` for the lifecycle) do the Redis work. Key names:
``healmesh.control.keys``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from healmesh.errors import ChangeRejected, Conflict
from healmesh.policies import routing
from healmesh.policies.drift_decision import DriftDecision
from healmesh.policies.rollout import ACTIVE, RolloutStatus
from healmesh.policies.routing import Weights


class ChangeConflict(Conflict):
    """A change that does not fit the current state, or lost its compare-and-set (409)."""


@dataclass(frozen=True)
class Shadow:
    enabled: bool = False
    target: routing.Variant = routing.PYTORCH

    def __post_init__(self) -> None:
        if self.target not in routing.VARIANTS:
            raise ChangeRejected(f"shadow target must be one of {', '.join(routing.VARIANTS)}, but was {self.target!r}",
                                 "target")
        object.__setattr__(self, "target", routing.Variant(self.target))


CANARY_SHADOW = Shadow(enabled=True, target=routing.XGB_CANARY)  # the rollout's shadow phase


class RolloutRejected(ChangeRejected):
    """A rollout change that is invalid in itself (422)."""


class RolloutConflict(ChangeConflict):
    """A rollout change that does not fit the current state (409)."""


@dataclass(frozen=True)
class Rollout:
    stage: int = 0  # percent of the XGBoost share the canary takes
    canary_version: str | None = None
    status: RolloutStatus = RolloutStatus.IDLE
    note: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", RolloutStatus(self.status))
        if not 0 <= self.stage <= 100:
            raise RolloutRejected(f"stage must be in [0, 100], but was {self.stage}", "stage")
        if self.stage > 0 and not self.canary_version:
            raise RolloutRejected("a rollout stage above 0 needs a canary_version", "canary_version")


def check_rollout(new: Rollout, stages: tuple[int, ...]) -> None:
    """What a rollout must be in itself: ``running`` at one of the configured ``stages`` with a
    canary version; ``shadow`` at stage 0 with a canary version; every other phase at stage 0
    (raises ``RolloutRejected``)."""
    if new.status is RolloutStatus.RUNNING:
        if new.stage not in stages:
            raise RolloutRejected(f"stage must be one of the configured stages {list(stages)}, but was {new.stage}",
                                  "stage")
        if not new.canary_version:
            raise RolloutRejected("a running rollout needs a canary_version", "canary_version")
    elif new.stage != 0:
        raise RolloutRejected(f"status {new.status.value!r} rests at stage 0, but stage was {new.stage}", "stage")
    elif new.status is RolloutStatus.SHADOW and not new.canary_version:
        raise RolloutRejected("a shadow stage needs a canary_version", "canary_version")


def check_rollout_change(current: Rollout, new: Rollout, stages: tuple[int, ...]) -> None:
    """The legal rollout changes (raises; returns None when legal): ``check_rollout``, and a
    running rollout keeps its canary version until it ends (one rollout at a time: end it
    first). Every resting phase is reachable from any phase: a rollback or a failed promotion
    must always be possible, and repeating one is harmless."""
    check_rollout(new, stages)
    if new.status in ACTIVE and current.status in ACTIVE and current.canary_version != new.canary_version:
        raise RolloutConflict(f"a rollout of v{current.canary_version} is running; end it (rolled_back or failed) "
                              f"before starting v{new.canary_version}")


@dataclass(frozen=True)
class DriftSummary:
    """What the drift DAG publishes; the gateway exports it as metrics."""

    checked_at: float | None = None
    model_version: str | None = None
    window_size: int = 0
    decision: DriftDecision = DriftDecision.NONE
    share_drifted: float = 0.0
    scores: Mapping[str, Mapping[str, float]] = field(default_factory=dict)  # feature -> {psi, ks, ...}
    report: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "decision", DriftDecision(self.decision))  # read back from JSON: a str


@dataclass(frozen=True)
class ControlState:
    weights: Weights = routing.DEFAULT
    shadow: Shadow = Shadow()
    rollout: Rollout = Rollout()
    drift: DriftSummary = DriftSummary()
    version: int = 0

    def describe(self) -> dict[str, Any]:
        return {"weights": self.weights.as_dict(), "shadow": asdict(self.shadow), "rollout": asdict(self.rollout),
                "drift": asdict(self.drift), "version": self.version}


def state_after_read(held: ControlState, current: ControlState, read: ControlState) -> ControlState:
    """What a worker routes by after a poll: ``read`` came from Redis, ``held`` is what the worker
    had when the read went out, ``current`` what it has now. An admin change this worker made
    while the read was on its way (``current`` is not ``held``) is newer than a read of a lower
    version: keep it. Otherwise the read wins, a lower version too (Redis may have been emptied)."""
    if current is not held and read.version < current.version:
        return current
    return read


def weights_for_stage(weights: Weights, stage: int) -> Weights:
    """Split the XGBoost share between stable and canary for a rollout stage."""
    w = weights.as_dict()
    xgb = w[routing.XGB_STABLE] + w[routing.XGB_CANARY]
    w[routing.XGB_CANARY] = xgb * stage / 100.0
    # clamped: x * 100 / 100 can differ from x in the last bit, and -1e-17 is not a weight
    w[routing.XGB_STABLE] = max(0.0, xgb - w[routing.XGB_CANARY])
    return Weights.parse(w)


def encode_drift(summary: DriftSummary) -> str:
    return json.dumps(asdict(summary))


def as_text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def apply_change(state: ControlState, what: str, value: Any, stages: tuple[int, ...]) -> ControlState:
    """The state after one change, checked against the state it applies to (pure)."""
    if what == "weights":
        weights = value if isinstance(value, Weights) else Weights.parse(value)
        if weights.get(routing.XGB_CANARY) > 0 and state.rollout.status is not RolloutStatus.RUNNING:
            raise ChangeConflict("the canary has weight but no rollout is running (PUT /admin/rollout)")
        return replace(state, weights=weights)
    if what == "shadow":
        return replace(state, shadow=value)
    if what == "rollout":
        rollout: Rollout = value
        check_rollout_change(state.rollout, rollout, stages)
        # the shadow phase mirrors traffic to the canary, and leaving it stops the mirror (in the
        # same change, so no worker routes by one without the other)
        shadow = (CANARY_SHADOW if rollout.status is RolloutStatus.SHADOW
                  else Shadow() if state.rollout.status is RolloutStatus.SHADOW else state.shadow)
        # the stage decides the stable/canary split of the XGBoost share
        return replace(state, rollout=rollout, shadow=shadow, weights=weights_for_stage(state.weights, rollout.stage))
    raise ChangeRejected(f"unknown control part {what!r}")


def parse_state(raw: Mapping[Any, Any], drift_raw: Any = None) -> ControlState:
    """Tolerant: a missing or broken part keeps its default (and never stops routing)."""
    fields = {as_text(k): as_text(v) for k, v in (raw or {}).items()}
    state = ControlState()
    try:
        if "weights" in fields:
            state = replace(state, weights=Weights.parse(json.loads(fields["weights"])))
    except (ValueError, TypeError):
        pass
    try:
        if "shadow" in fields:
            state = replace(state, shadow=Shadow(**json.loads(fields["shadow"])))
    except (ValueError, TypeError):
        pass
    try:
        if "rollout" in fields:
            state = replace(state, rollout=Rollout(**json.loads(fields["rollout"])))
    except (ValueError, TypeError):
        pass
    try:
        if drift_raw:
            state = replace(state, drift=DriftSummary(**json.loads(as_text(drift_raw))))
    except (ValueError, TypeError):
        pass
    return replace(state, version=int(fields.get("version", 0) or 0))
