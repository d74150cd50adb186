"""A retry budget (as in Finagle and gRPC): retries may add at most ``ratio`` extra calls over
the last ``window_s`` seconds, plus a small floor so that a quiet service can still retry."""

from __future__ import annotations

import time
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict, model_validator


class RetryBudgetConfig(BaseModel):
    """Frozen and validated; it is also ``Settings.retry_budget`` (env ``HEALMESH_RETRY_BUDGET__<FIELD>``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ratio: float = 0.2
    window_s: int = 10
    min_per_window: int = 10

    @model_validator(mode="after")
    def _check(self) -> RetryBudgetConfig:
        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"ratio must be in [0, 1], but was {self.ratio}")
        if self.window_s < 1:
            raise ValueError(f"window_s must be >= 1, but was {self.window_s}")
        if self.min_per_window < 0:
            raise ValueError(f"min_per_window must be >= 0, but was {self.min_per_window}")
        return self


class RetryBudget:
    """One-second buckets over the window: O(1) per call."""

    def __init__(self, config: RetryBudgetConfig | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config = config or RetryBudgetConfig()
        self._clock = clock
        n = config.window_s
        self._requests = [0] * n
        self._retries = [0] * n
        self._stamp = [0] * n  # which second each bucket holds

    def _bucket(self) -> int:
        second = int(self._clock())
        i = second % self.config.window_s
        if self._stamp[i] != second:
            self._stamp[i], self._requests[i], self._retries[i] = second, 0, 0
        return i

    def _totals(self) -> tuple[int, int]:
        now = int(self._clock())
        lo = now - self.config.window_s
        req = sum(r for r, s in zip(self._requests, self._stamp, strict=True) if s > lo)
        ret = sum(r for r, s in zip(self._retries, self._stamp, strict=True) if s > lo)
        return req, ret

    def record_request(self) -> None:
        self._requests[self._bucket()] += 1

    def try_spend(self) -> bool:
        """Take one retry if the budget allows it."""
        requests, retries = self._totals()
        if retries >= max(self.config.min_per_window, self.config.ratio * requests):
            return False
        self._retries[self._bucket()] += 1
        return True
