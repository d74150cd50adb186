"""An adaptive concurrency limit (issue 12, item 1): how many requests may be in flight at once,
found from measured latency rather than set by hand. Pure: samples and an injected clock in, a
limit and admission answers out. The gateway holds one for its admission and one per model
upstream (``healmesh.policies.chain`` asks the upstream's before each call).

The rule is the gradient of Netflix's concurrency-limits (Gradient2) with a latency target, as
Envoy's adaptive concurrency filter has one:

- per window (``window_s``, at least ``min_window_samples`` completed requests) the short-term
  latency is the window's mean; the baseline is the no-queue latency: the lowest window mean
  seen, allowed to drift up by ``baseline_drift`` a window so a lasting slowdown (a slower model)
  is adopted in minutes. Gradient2's exponential average, and a minimum over the last windows,
  both follow a queue that builds slowly: with either, a simulated server's limit crept to 6-7x
  its capacity (the unit test's server);
- ``gradient = clamp(tolerance * long / short, min_gradient, 1)``, and when the short-term latency
  is over the target also at most ``target / short``: 1 while latency holds, under 1 as a queue
  builds (short > long) or the target is missed;
- ``new = limit * gradient + sqrt(limit)`` (the square root is the headroom that lets the limit
  probe upwards), smoothed: ``limit = (1 - smoothing) * limit + smoothing * new``, within
  ``[min_limit, max_limit]``;
- the limit does not rise in a window whose peak in-flight stayed under half of it (the traffic,
  not the server, was the bottleneck: no evidence the server can take more);
- a request that was dropped (timeout, overload) cuts the limit at once by ``backoff``.

Admission: a primary request is admitted below the limit; a shadow call only below
``shadow_share`` of it (shadow traffic is dropped first); past the limit the answer is a shed with
``retry_after_s``, at once, never a wait.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, model_validator

from healmesh.policies.checks import need


class LimiterConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    initial_limit: float = 64.0
    # the floor: never shed below this many in flight. A slow server (a latency fault, a cold
    # process) looks like a queue to a gradient and would drive the limit to nothing. 64 per
    # worker: a 64-client load is never shed, whichever worker its connections land on (at 32,
    # 64 clients on 2 workers were shed 15 % of the time: bench/profile_gateway.py)
    min_limit: float = 64.0
    max_limit: float = 1024.0
    # a card authorisation waits about 100 ms for the score: past it an answer is as bad as none
    latency_target_s: float = 0.1
    tolerance: float = 1.5  # short-term latency may be this many times the long-term before the limit falls
    min_gradient: float = 0.5  # the most one window may cut (before smoothing)
    smoothing: float = 0.2
    backoff: float = 0.9  # a dropped request: limit x this, at once
    window_s: float = 1.0
    min_window_samples: int = 10
    # the baseline's upward drift per window: a 2x slowdown is adopted in about 350 windows
    baseline_drift: float = 0.002
    shadow_share: float = 0.5
    retry_after_s: float = 1.0

    @model_validator(mode="after")
    def _check(self) -> LimiterConfig:
        need(1 <= self.min_limit <= self.initial_limit <= self.max_limit,
             "limits must satisfy 1 <= min_limit <= initial_limit <= max_limit",
             (self.min_limit, self.initial_limit, self.max_limit))
        need(self.latency_target_s > 0, "latency_target_s must be > 0", self.latency_target_s)
        need(self.tolerance >= 1, "tolerance must be >= 1", self.tolerance)
        need(0 < self.min_gradient <= 1, "min_gradient must be in (0, 1]", self.min_gradient)
        need(0 < self.smoothing <= 1, "smoothing must be in (0, 1]", self.smoothing)
        need(0 < self.backoff < 1, "backoff must be in (0, 1)", self.backoff)
        need(self.window_s > 0, "window_s must be > 0", self.window_s)
        need(self.min_window_samples >= 1, "min_window_samples must be >= 1", self.min_window_samples)
        need(0 <= self.baseline_drift < 0.1, "baseline_drift must be in [0, 0.1)", self.baseline_drift)
        need(0 < self.shadow_share <= 1, "shadow_share must be in (0, 1]", self.shadow_share)
        need(self.retry_after_s > 0, "retry_after_s must be > 0", self.retry_after_s)
        return self


class Kind(StrEnum):
    PRIMARY = "primary"
    SHADOW = "shadow"


@dataclass(frozen=True)
class Admission:
    admitted: bool
    limit: int
    in_flight: int
    retry_after_s: float | None = None  # set when shed
    reason: str = ""


class ConcurrencyLimit:
    """One limit (the gateway's admission, or one upstream's). Not thread-safe: one event loop.

    Two ways to use it: ``try_acquire`` / ``release`` when it counts its own in-flight
    requests (the gateway does), or ``admit`` / ``record`` with a count kept elsewhere."""

    def __init__(self, config: LimiterConfig | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config or LimiterConfig()
        self._clock = clock
        self._limit = self.config.initial_limit
        self._baseline: float | None = None
        self._window_start = clock()
        self._sum = 0.0
        self._n = 0
        self._peak = 0
        self.in_flight = 0  # taken by try_acquire, given back by release
        self.shed = {Kind.PRIMARY: 0, Kind.SHADOW: 0}  # refusals by try_acquire

    @property
    def limit(self) -> int:
        return max(1, int(self._limit))

    @property
    def baseline_s(self) -> float | None:
        """The no-queue latency: the lowest window mean seen, drifting up slowly."""
        return self._baseline

    def admit(self, in_flight: int, kind: Kind = Kind.PRIMARY) -> Admission:
        """May one more request (in addition to ``in_flight``) start now?"""
        cap = self.limit if kind is Kind.PRIMARY else max(1, int(self._limit * self.config.shadow_share))
        if in_flight < cap:
            return Admission(True, self.limit, in_flight)
        what = "the concurrency limit" if kind is Kind.PRIMARY else "the shadow share of the limit"
        return Admission(False, self.limit, in_flight, self.config.retry_after_s,
                         f"{in_flight} in flight reached {what} ({cap})")

    def try_acquire(self, kind: Kind = Kind.PRIMARY) -> Admission:
        """``admit`` against this limit's own in-flight count; an admitted request holds a slot
        until ``release``."""
        answer = self.admit(self.in_flight, kind)
        if answer.admitted:
            self.in_flight += 1
        else:
            self.shed[kind] += 1
        return answer

    def release(self, latency_s: float | None, dropped: bool = False) -> None:
        """Give back a slot of ``try_acquire``; ``latency_s`` None: the request was abandoned
        (cancelled), which says nothing about the server."""
        if self.in_flight <= 0:
            raise ValueError("release without a slot taken")
        if latency_s is not None or dropped:
            self.record(latency_s or 0.0, self.in_flight, dropped)
        self.in_flight -= 1

    def describe(self) -> dict[str, object]:
        return {"limit": self.limit, "in_flight": self.in_flight, "baseline_ms":
                None if self._baseline is None else round(self._baseline * 1000.0, 2),
                "shed": {k.value: v for k, v in self.shed.items()}}

    def record(self, latency_s: float, in_flight: int, dropped: bool = False) -> None:
        """One request ended after ``latency_s``; ``in_flight`` were running as it ended (itself
        included); ``dropped``: it timed out or was refused downstream."""
        cfg = self.config
        if dropped:
            self._limit = max(cfg.min_limit, self._limit * cfg.backoff)
            return
        if not (math.isfinite(latency_s) and latency_s >= 0):
            raise ValueError(f"latency_s must be finite and >= 0, but was {latency_s}")
        self._sum += latency_s
        self._n += 1
        self._peak = max(self._peak, in_flight)
        now = self._clock()
        if now - self._window_start >= cfg.window_s and self._n >= cfg.min_window_samples:
            self._update(self._sum / self._n, self._peak)
            self._window_start, self._sum, self._n, self._peak = now, 0.0, 0, 0

    def _update(self, short: float, peak: int) -> None:
        cfg = self.config
        drifted = self._baseline * (1 + cfg.baseline_drift) if self._baseline is not None else short
        self._baseline = baseline = min(drifted, short)
        gradient = min(1.0, cfg.tolerance * baseline / short) if short > 0 else 1.0
        if short > cfg.latency_target_s:
            gradient = min(gradient, cfg.latency_target_s / short)
        gradient = max(cfg.min_gradient, gradient)
        proposed = self._limit * gradient + math.sqrt(self._limit)
        if proposed > self._limit and peak < self._limit / 2:
            return  # app-limited: no evidence the server takes more
        smoothed = (1 - cfg.smoothing) * self._limit + cfg.smoothing * proposed
        self._limit = min(cfg.max_limit, max(cfg.min_limit, smoothed))
