"""The fraud example's data: a seeded generator of card transactions with dialable drift.

Legitimate traffic has realistic marginals: log-normal amounts that depend on the merchant
category, a daily cycle, card-holder profiles. Fraud is rare (``positive_rate``) and comes from
a mixture of *patterns*, each moving several features at once (card testing: tiny online
amounts at high velocity; account takeover: large online purchases far above the card's
average at night; ...). No single feature separates the classes: legitimate travellers are
foreign and far from home too, and a share of fraud is camouflaged.

Two drift controls:
- ``covariate_shift``: move the named features for every row (P(x) changes, the patterns stay);
- ``concept_drift``: the share of fraud drawn from a *new* set of patterns that the original
  regime never showed (P(y|x) changes).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd

from healmesh import schema
from healmesh.data import NO_DRIFT, DriftSpec
from healmesh.errors import ConfigError
from healmesh.schema import CategoricalFeature, NumericFeature

PATTERN = "fraud_pattern"  # diagnostic column: which pattern made a fraud row ("legit" otherwise)

_LEGIT_HOURS = np.array([1, .6, .4, .3, .3, .5, 1.2, 2.5, 4, 5, 5.5, 6, 7, 6.5, 6, 6, 6.5, 7, 7.5, 7, 6, 5, 3.5, 2])
_NIGHT_HOURS = np.array([5, 6, 6, 5, 4, 3, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 3, 4, 4, 5], dtype=float)
_DAY_HOURS = np.array([0, 0, 0, 0, 0, 0, 1, 2, 4, 6, 7, 7, 7, 7, 7, 6, 5, 4, 3, 2, 1, 0, 0, 0], dtype=float)

_MERCHANT_P = {
    "grocery": .22, "restaurant": .15, "fuel": .10, "online_retail": .15, "entertainment": .06,
    "pharmacy": .05, "travel": .04, "electronics": .04, "atm_cash": .06, "jewelry": .01,
    "gambling": .01, "other": .11,
}
# log-mean of the amount by merchant category (sigma 0.8)
_AMOUNT_LOGMEAN = {
    "grocery": 3.7, "restaurant": 3.4, "fuel": 3.8, "online_retail": 4.0, "entertainment": 3.6,
    "pharmacy": 3.2, "travel": 5.8, "electronics": 5.3, "atm_cash": 4.6, "jewelry": 6.0,
    "gambling": 4.5, "other": 3.9,
}




# the drift scenarios of `healmesh demo drift --kind NAME`
SCENARIOS = {
    "covariate": DriftSpec(covariate_shift={"amount": 1.2, "distance_from_home_km": 1.0, "channel": 0.4,
                                            "merchant_category": 0.3}),
    "concept": DriftSpec(concept_drift=1.0),
}


def generate(n: int, *, seed: int = 0, positive_rate: float | None = None, drift: DriftSpec = NO_DRIFT) -> pd.DataFrame:
    """``n`` transactions: the schema's features, ``is_fraud``, ``card_id`` and ``fraud_pattern``."""
    if n <= 0:
        raise ConfigError(f"n must be positive, but was {n}")
    positive_rate = 0.02 if positive_rate is None else positive_rate
    if not 0.0 < positive_rate < 0.5:
        raise ConfigError(f"positive_rate must be in (0, 0.5), but was {positive_rate}")
    rng = np.random.default_rng(seed)
    cols = _legit(rng, n)
    labels = rng.random(n) < positive_rate
    patterns = np.full(n, "legit", dtype=object)
    fraud_idx = np.flatnonzero(labels)
    if fraud_idx.size:
        new_regime = rng.random(fraud_idx.size) < drift.concept_drift
        for regime_mask, table in ((~new_regime, ORIGINAL_PATTERNS), (new_regime, NEW_PATTERNS)):
            idx = fraud_idx[regime_mask]
            if idx.size:
                _apply_patterns(rng, cols, idx, table, patterns)
    S = schema.active()
    frame = pd.DataFrame({name: cols[name] for name in S.feature_names})
    frame = _finalise(frame)
    if drift.covariate_shift:
        frame = apply_covariate_shift(frame, drift.covariate_shift, rng)
    n_cards = max(100, n // 20)
    frame["card_id"] = [f"card-{k:07d}" for k in rng.integers(0, n_cards, n)]
    frame["is_fraud"] = labels.astype(np.int64)
    frame[PATTERN] = patterns
    return frame


def apply_covariate_shift(frame: pd.DataFrame, shift: Mapping[str, float], rng: np.random.Generator) -> pd.DataFrame:
    out = frame.copy()
    for name, amount in shift.items():
        f = schema.active().feature(name)
        col = out[name]
        if isinstance(f, CategoricalFeature):
            counts = col.value_counts().reindex(f.categories, fill_value=0).to_numpy(dtype=float)
            weights = 1.0 / (counts + 1.0)
            redraw = rng.random(len(out)) < amount
            out.loc[redraw, name] = rng.choice(f.categories, size=int(redraw.sum()), p=weights / weights.sum())
            continue
        values = col.to_numpy(dtype=float)
        moved = values * np.exp(amount) if f.skewed else values + amount * values.std()
        if f.integer:
            # stochastic rounding: a shift smaller than one unit still moves the mean by that much
            moved = np.floor(moved) + (rng.random(len(moved)) < (moved - np.floor(moved)))
        out[name] = _clip_numeric(f, moved)
    return out


# --- legitimate traffic -------------------------------------------------------------------


def _choice(rng: np.random.Generator, options: Mapping[str, float], size: int) -> np.ndarray:
    keys = list(options)
    p = np.array([options[k] for k in keys], dtype=float)
    return rng.choice(np.array(keys, dtype=object), size=size, p=p / p.sum())


def _hours(rng: np.random.Generator, weights: np.ndarray, size: int) -> np.ndarray:
    return rng.choice(24, size=size, p=weights / weights.sum())


def _legit(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    merchant = _choice(rng, _MERCHANT_P, n)
    channel = _choice(rng, {"chip": .45, "contactless": .35, "swipe": .10, "online": .08, "phone_order": .02}, n)
    is_online_shop = merchant == "online_retail"
    channel[is_online_shop] = _choice(rng, {"online": .92, "phone_order": .08}, int(is_online_shop.sum()))
    channel[merchant == "atm_cash"] = "atm"
    geo_p = np.where(merchant == "travel", 0.30, 0.03)
    foreign = rng.random(n) < geo_p
    logmean = np.array([_AMOUNT_LOGMEAN[m] for m in merchant])
    amount = rng.lognormal(logmean, 0.8)
    is_atm = merchant == "atm_cash"
    amount[is_atm] = np.round(amount[is_atm] / 20.0) * 20.0 + 20.0
    customer_avg = rng.lognormal(4.0, 0.6, n)  # the card's 7-day average amount
    home = np.where(foreign, rng.lognormal(7.3, 0.8, n), rng.lognormal(1.8, 1.2, n))
    cols = {
        "amount": amount,
        "hour": _hours(rng, _LEGIT_HOURS, n),
        "distance_from_home_km": home,
        "distance_from_last_txn_km": rng.lognormal(1.5, 1.3, n),
        "seconds_since_last_txn": rng.lognormal(9.0, 1.5, n),
        "txn_count_1h": rng.poisson(0.3, n),
        "txn_count_24h": rng.poisson(3.0, n),
        "amount_to_avg_7d": amount / customer_avg,
        "card_age_days": rng.gamma(2.0, 450.0, n),
        "customer_age_years": rng.normal(45.0, 15.0, n),
        "merchant_risk_score": rng.beta(2.0, 18.0, n),
        "failed_auth_24h": rng.poisson(0.05, n),
        "merchant_category": merchant,
        "channel": channel,
        "geo": np.where(foreign, "foreign", "domestic").astype(object),
        "card_type": _choice(rng, {"debit": .55, "credit": .40, "prepaid": .05}, n),
        "_customer_avg": customer_avg,
    }
    _legit_lookalikes(rng, cols)
    return cols


def _legit_lookalikes(rng: np.random.Generator, cols: dict[str, np.ndarray]) -> None:
    """Honest customers who look like fraud on one or two features: no single rule is enough."""
    n = len(cols["amount"])
    for key in ("txn_count_1h", "seconds_since_last_txn", "amount_to_avg_7d", "failed_auth_24h", "hour"):
        cols[key] = cols[key].astype(float)
    busy = rng.random(n) < 0.05  # commuters, office lunch runs: many small payments
    cols["txn_count_1h"][busy] = rng.poisson(3.5, int(busy.sum()))
    cols["seconds_since_last_txn"][busy] = rng.lognormal(5.0, 1.2, int(busy.sum()))
    splurge = rng.random(n) < 0.04  # holidays, a new phone: well above the usual spend
    cols["amount_to_avg_7d"][splurge] *= rng.lognormal(1.4, 0.6, int(splurge.sum()))
    forgetful = rng.random(n) < 0.02  # mistyped PINs
    cols["failed_auth_24h"][forgetful] = rng.poisson(1.8, int(forgetful.sum()))
    night_shift = rng.random(n) < 0.04
    cols["hour"][night_shift] = _hours(rng, _NIGHT_HOURS, int(night_shift.sum()))


# --- fraud patterns ---------------------------------------------------------------------------

PatternFn = Callable[[np.random.Generator, int], dict[str, np.ndarray]]


def _card_testing(rng: np.random.Generator, m: int) -> dict[str, np.ndarray]:
    return {
        "merchant_category": _choice(rng, {"online_retail": .5, "other": .3, "entertainment": .2}, m),
        "channel": _choice(rng, {"online": .8, "phone_order": .2}, m),
        "amount": rng.lognormal(1.0, 0.8, m),
        "txn_count_1h": rng.poisson(7.0, m),
        "txn_count_24h": rng.poisson(18.0, m),
        "seconds_since_last_txn": rng.lognormal(4.0, 1.0, m),
        "failed_auth_24h": rng.poisson(1.2, m),
        "card_type": _choice(rng, {"debit": .3, "credit": .4, "prepaid": .3}, m),
    }


def _account_takeover(rng: np.random.Generator, m: int) -> dict[str, np.ndarray]:
    merchant = _choice(rng, {"electronics": .35, "jewelry": .2, "travel": .2, "online_retail": .25}, m)
    amount = rng.lognormal(6.2, 0.7, m)
    foreign = rng.random(m) < 0.4
    return {
        "merchant_category": merchant,
        "channel": _choice(rng, {"online": .85, "phone_order": .15}, m),
        "amount": amount,
        "amount_to_avg_7d": rng.lognormal(1.8, 0.6, m),
        "hour": _hours(rng, _NIGHT_HOURS, m),
        "distance_from_last_txn_km": rng.lognormal(5.5, 1.5, m),
        "geo": np.where(foreign, "foreign", "domestic").astype(object),
        "card_type": _choice(rng, {"debit": .2, "credit": .8}, m),
    }


def _stolen_card_pos(rng: np.random.Generator, m: int) -> dict[str, np.ndarray]:
    return {
        "merchant_category": _choice(rng, {"electronics": .3, "jewelry": .2, "fuel": .25, "grocery": .25}, m),
        "channel": _choice(rng, {"swipe": .55, "contactless": .35, "chip": .10}, m),
        "distance_from_home_km": rng.lognormal(4.5, 1.0, m),
        "distance_from_last_txn_km": rng.lognormal(4.0, 1.2, m),
        "amount_to_avg_7d": rng.lognormal(1.2, 0.6, m),
        "hour": _hours(rng, _NIGHT_HOURS + 1.0, m),
        "failed_auth_24h": rng.poisson(2.0, m),
    }


def _atm_cashout(rng: np.random.Generator, m: int) -> dict[str, np.ndarray]:
    foreign = rng.random(m) < 0.6
    return {
        "merchant_category": np.full(m, "atm_cash", dtype=object),
        "channel": np.full(m, "atm", dtype=object),
        "amount": rng.integers(20, 51, m) * 20.0,
        "amount_to_avg_7d": rng.lognormal(1.5, 0.5, m),
        "geo": np.where(foreign, "foreign", "domestic").astype(object),
        "distance_from_home_km": np.where(foreign, rng.lognormal(7.5, 0.6, m), rng.lognormal(3.5, 1.0, m)),
        "hour": _hours(rng, _NIGHT_HOURS, m),
        "card_age_days": rng.gamma(1.5, 40.0, m),
        "card_type": _choice(rng, {"debit": .6, "prepaid": .4}, m),
    }


# The new regime (concept drift): fraud that looks like ordinary daytime, domestic spending.
def _compromised_merchant(rng: np.random.Generator, m: int) -> dict[str, np.ndarray]:
    return {
        "merchant_category": _choice(rng, {"grocery": .35, "fuel": .35, "pharmacy": .3}, m),
        "channel": _choice(rng, {"contactless": .7, "chip": .3}, m),
        "merchant_risk_score": rng.beta(6.0, 6.0, m),
        "hour": _hours(rng, _DAY_HOURS, m),
        "txn_count_1h": rng.poisson(2.5, m),
        "amount_to_avg_7d": rng.lognormal(0.5, 0.3, m),
    }


def _elder_phone_scam(rng: np.random.Generator, m: int) -> dict[str, np.ndarray]:
    return {
        "merchant_category": _choice(rng, {"other": .6, "gambling": .4}, m),
        "channel": np.full(m, "phone_order", dtype=object),
        "customer_age_years": rng.uniform(72.0, 95.0, m),
        "amount": rng.lognormal(5.8, 0.4, m),
        "amount_to_avg_7d": rng.lognormal(1.1, 0.3, m),
        "hour": _hours(rng, _DAY_HOURS, m),
        "card_age_days": rng.gamma(4.0, 800.0, m),
    }


ORIGINAL_PATTERNS: dict[str, tuple[float, PatternFn]] = {
    "card_testing": (0.30, _card_testing),
    "account_takeover": (0.35, _account_takeover),
    "stolen_card_pos": (0.20, _stolen_card_pos),
    "atm_cashout": (0.15, _atm_cashout),
}
NEW_PATTERNS: dict[str, tuple[float, PatternFn]] = {
    "compromised_merchant": (0.6, _compromised_merchant),
    "elder_phone_scam": (0.4, _elder_phone_scam),
}
# Share of pattern-driven values replaced by the legitimate value: real fraud is not clean.
CAMOUFLAGE = 0.35


def _apply_patterns(rng: np.random.Generator, cols: dict[str, np.ndarray], idx: np.ndarray,
                    table: Mapping[str, tuple[float, PatternFn]], patterns: np.ndarray) -> None:
    names = list(table)
    weights = np.array([table[k][0] for k in names])
    which = rng.choice(len(names), size=idx.size, p=weights / weights.sum())
    for k, name in enumerate(names):
        rows = idx[which == k]
        if not rows.size:
            continue
        patterns[rows] = name
        values_by_col = table[name][1](rng, rows.size)
        for col, values in values_by_col.items():
            keep_legit = rng.random(rows.size) < CAMOUFLAGE
            target = cols[col]
            if target.dtype != object:
                target = target.astype(float)
                cols[col] = target
            target[rows[~keep_legit]] = values[~keep_legit]
        if "amount" in values_by_col and "amount_to_avg_7d" not in values_by_col:
            # keep the ratio consistent with the new amount and the card's own average
            cols["amount_to_avg_7d"][rows] = cols["amount"][rows] / cols["_customer_avg"][rows]


# --- clean-up: ranges, integers ----------------------------------------------------------------


def _clip_numeric(f: NumericFeature, values: np.ndarray) -> np.ndarray:
    clipped = np.clip(values, f.min, f.max)
    if f.integer:
        return np.rint(clipped).astype(np.int64)
    return np.round(clipped, 4)


def _finalise(frame: pd.DataFrame) -> pd.DataFrame:
    for f in schema.active().numeric:
        frame[f.name] = _clip_numeric(f, frame[f.name].to_numpy(dtype=float))
    frame["amount"] = np.maximum(np.round(frame["amount"], 2), 0.01)
    # the 24h count includes the last hour
    frame["txn_count_24h"] = np.minimum(frame["txn_count_24h"] + frame["txn_count_1h"], 1_000)
    for c in schema.active().categorical:
        frame[c.name] = frame[c.name].astype(str)
    return frame
