"""The interpretable rule score: the fallback scorer's model and the gateway's last resort.

Each rule is a named condition over schema features with a weight; the score is
``sigmoid(BIAS + sum of fired weights)``. Plain NumPy: no xgboost, no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from healmesh import schema

Columns = Mapping[str, np.ndarray]

MODEL_NAME = "rules"
RULES_VERSION = "1"
# calibrated so that a transaction with no rule fired scores near the base fraud rate
BIAS = -3.5
THRESHOLD = 0.5


@dataclass(frozen=True)
class Rule:
    name: str
    uses: tuple[str, ...]
    weight: float
    test: Callable[[Columns], np.ndarray]
    why: str


def _in(col: np.ndarray, *values: str) -> np.ndarray:
    return np.isin(col, values)


RULES: tuple[Rule, ...] = (
    Rule("velocity_1h", ("txn_count_1h",), 2.0, lambda c: c["txn_count_1h"] >= 4,
         "4 or more transactions in the last hour"),
    Rule("rapid_succession", ("seconds_since_last_txn",), 1.0, lambda c: c["seconds_since_last_txn"] < 120,
         "under 2 minutes since the previous transaction"),
    Rule("failed_auth", ("failed_auth_24h",), 1.5, lambda c: c["failed_auth_24h"] >= 2,
         "2 or more failed PIN/CVV attempts today"),
    Rule("spend_spike", ("amount_to_avg_7d",), 1.5, lambda c: c["amount_to_avg_7d"] >= 4,
         "amount 4x the card's 7-day average or more"),
    Rule("extreme_spend_spike", ("amount_to_avg_7d",), 1.0, lambda c: c["amount_to_avg_7d"] >= 10,
         "amount 10x the card's 7-day average or more"),
    Rule("night", ("hour",), 0.8, lambda c: c["hour"] <= 5, "between midnight and 6 am"),
    Rule("impossible_travel", ("distance_from_last_txn_km", "seconds_since_last_txn"), 1.5,
         lambda c: (c["distance_from_last_txn_km"] > 500) & (c["seconds_since_last_txn"] < 3600),
         "over 500 km from the previous transaction within an hour"),
    Rule("far_from_home_domestic", ("distance_from_home_km", "geo"), 0.8,
         lambda c: (c["distance_from_home_km"] > 100) & (c["geo"] == "domestic"),
         "over 100 km from home in the home country"),
    Rule("card_not_present_high_value_goods", ("channel", "merchant_category"), 1.0,
         lambda c: (_in(c["channel"], "online", "phone_order")
                    & _in(c["merchant_category"], "electronics", "jewelry", "travel")),
         "card not present, buying easily resold goods"),
    Rule("tiny_card_not_present", ("amount", "channel"), 1.0,
         lambda c: (c["amount"] < 5) & _in(c["channel"], "online", "phone_order"),
         "card-not-present amount under 5 (card testing)"),
    Rule("new_card", ("card_age_days",), 1.0, lambda c: c["card_age_days"] < 30, "card issued under 30 days ago"),
    Rule("foreign_atm", ("channel", "geo"), 1.0, lambda c: (c["channel"] == "atm") & (c["geo"] == "foreign"),
         "cash withdrawal abroad"),
    Rule("risky_merchant", ("merchant_risk_score",), 1.0, lambda c: c["merchant_risk_score"] > 0.4,
         "merchant with a high chargeback rate"),
    Rule("prepaid", ("card_type",), 0.5, lambda c: c["card_type"] == "prepaid", "prepaid card"),
    Rule("magstripe", ("channel",), 0.4, lambda c: c["channel"] == "swipe", "magnetic stripe instead of chip"),
)

# A rule that names a feature the schema does not have fails here, at import.
for _rule in RULES:
    for _name in _rule.uses:
        schema.feature(_name)


def _columns_from_records(records: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    return {f.name: np.array([r[f.name] for r in records]) for f in schema.FEATURES}


def _columns_from_frame(df: pd.DataFrame) -> dict[str, np.ndarray]:
    return {f.name: df[f.name].to_numpy() for f in schema.FEATURES}


def _score(cols: Columns) -> np.ndarray:
    n = len(next(iter(cols.values())))
    logit = np.full(n, BIAS)
    for rule in RULES:
        logit += rule.weight * rule.test(cols).astype(float)
    return 1.0 / (1.0 + np.exp(-logit))


def score_records(records: Sequence[Mapping[str, Any]]) -> np.ndarray:
    if not records:
        return np.zeros(0)
    return _score(_columns_from_records(records))


def score_frame(df: pd.DataFrame) -> np.ndarray:
    return _score(_columns_from_frame(df))


def explain(record: Mapping[str, Any]) -> list[str]:
    """The rules that fire for one transaction, in plain words."""
    cols = _columns_from_records([record])
    return [f"{r.name}: {r.why}" for r in RULES if bool(r.test(cols)[0])]
