"""Weighted routing among the model variants, optionally sticky by an entity key.

Variants are the model endpoints with a routing weight. An open (or ramping) breaker scales a
variant's weight by its capacity; the share it loses goes to the other variants that have a
weight, in proportion. With no variant left the caller goes to the fallback scorer.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from healmesh.errors import ChangeRejected


class Variant(StrEnum):
    """The model endpoints with a routing weight (the values are what Redis, the JSON answers and
    the metrics labels carry)."""

    XGB_STABLE = "xgboost_stable"
    XGB_CANARY = "xgboost_canary"
    PYTORCH = "pytorch"


XGB_STABLE, XGB_CANARY, PYTORCH = Variant.XGB_STABLE, Variant.XGB_CANARY, Variant.PYTORCH
VARIANTS: tuple[Variant, ...] = tuple(Variant)
FALLBACK = "fallback"  # the rule scorer: not weighted, the next step after the variants
RULES = "gateway_rules"  # the gateway's own in-process rules: the last resort

DEFAULT_WEIGHTS: Mapping[str, float] = {XGB_STABLE: 0.8, XGB_CANARY: 0.0, PYTORCH: 0.2}


MAX_WEIGHT = 1e6  # weights are relative; a bound keeps their sum finite (1e308 + 1e308 is inf)


class WeightsError(ChangeRejected):
    """Routing weights that are not weights (422); ``field`` names the one at fault."""

    def __init__(self, message: str, field: str = "weights") -> None:
        super().__init__(message, field)


@dataclass(frozen=True)
class Weights:
    """Routing weights over ``VARIANTS``, normalised to sum 1."""

    values: tuple[tuple[str, float], ...]

    @classmethod
    def parse(cls, raw: Mapping[str, float]) -> Weights:
        unknown = sorted(set(raw) - set(VARIANTS))
        if unknown:
            raise WeightsError(f"unknown variant {unknown[0]!r}; variants are {', '.join(VARIANTS)}",
                               f"weights.{unknown[0]}")
        values: dict[str, float] = {}
        for v in VARIANTS:
            w = raw.get(v, 0.0)
            if isinstance(w, bool) or not isinstance(w, int | float) or not math.isfinite(w) \
                    or not 0 <= w <= MAX_WEIGHT:
                raise WeightsError(f"weights.{v} must be a number in [0, {MAX_WEIGHT:g}], but was {w!r}",
                                   f"weights.{v}")
            values[v] = float(w)
        total = sum(values.values())
        if total <= 0:
            raise WeightsError("at least one weight must be > 0")
        return cls(tuple((v, values[v] / total) for v in VARIANTS))

    def as_dict(self) -> dict[str, float]:
        return dict(self.values)

    def get(self, variant: str) -> float:
        return dict(self.values).get(variant, 0.0)


DEFAULT = Weights.parse(DEFAULT_WEIGHTS)


def effective(weights: Weights, capacity: Mapping[str, float]) -> dict[str, float]:
    """Weights after breakers: each variant keeps ``weight * capacity``; the rest goes to
    the variants that still have a weight, pro rata. All zero means: no variant is usable."""
    kept = {v: w * max(0.0, min(1.0, capacity.get(v, 1.0))) for v, w in weights.values}
    total = sum(kept.values())
    if total <= 0:
        return {v: 0.0 for v in VARIANTS}
    return {v: k / total for v, k in kept.items()}


def key_point(key: str) -> float:
    """A stable point in [0, 1) for an entity key (same key, same point, every process)."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def choose(weights: Mapping[str, float], point: float) -> str | None:
    """The variant whose cumulative weight interval holds ``point`` (0 <= point < 1)."""
    acc = 0.0
    last = None
    for v in VARIANTS:
        w = weights.get(v, 0.0)
        if w <= 0:
            continue
        acc += w
        last = v
        if point < acc:
            return v
    return last  # rounding: a point at the very top belongs to the last variant


def probe_first(configured: Weights, wanting_probe: Iterable[str]) -> str | None:
    """A configured variant whose breaker waits for a probe request, taken before the routing
    point: a half-open breaker closes only on real calls, and a sticky key may never choose it."""
    wanting = set(wanting_probe)
    return next((v for v, w in configured.values if w > 0 and v in wanting), None)


def failover_candidates(weights: Mapping[str, float], tried: Iterable[str]) -> list[str]:
    """Variants still usable for a retry, the largest share first."""
    done = set(tried)
    left = [(w, v) for v, w in weights.items() if w > 0 and v not in done]
    return [v for _, v in sorted(left, key=lambda x: (-x[0], VARIANTS.index(x[1])))]
