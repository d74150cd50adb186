"""What a drift check decided (made by ``healmesh.policies.drift_alarm.decide``, published in the
control state's drift summary, read by the gateway's metrics and the drift DAG). A module of its
own so that the gateway reads it without the statistics' imports (scipy)."""

from __future__ import annotations

from enum import StrEnum


class DriftDecision(StrEnum):
    DRIFT = "drift"  # the one that retrains
    DRIFT_REPORTED = "drift_reported"  # drifted, but on unimportant features or harmlessly: no retrain
    ANOMALOUS_TRAFFIC = "anomalous_traffic"  # a few distinct rows dominate the window: no retrain
    NO_DRIFT = "no_drift"
    INSUFFICIENT_DATA = "insufficient_data"  # the window is smaller than ``min_window``: no decision
    NONE = "none"  # in the drift summary only: no check has run yet
