"""Fault injection for chaos runs and gateway tests: off by default, set through a
token-protected admin API, applied by an ASGI middleware in front of the predict routes
(so an injected error or delay is per request, independent of batching)."""

from __future__ import annotations

import asyncio
import json
import random
import threading
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from healmesh.errors import ConfigError

Slot = Literal["all", "stable", "canary"]

# ASGI types, kept local to avoid a dependency for three aliases
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class FaultConfig:
    error_rate: float = 0.0  # share of predict requests answered with `status`
    latency_ms: float = 0.0  # added before each predict request is handled
    status: int = 500  # 500 (a broken model) or 503/429 (an overloaded one)
    slot: Slot = "all"  # which predict route: stable, canary or both
    fail_readyz: bool = False  # /readyz answers 503 while the fault is on
    garbage_rate: float = 0.0  # share of predict requests answered 200 with a body that is not JSON
    seed: int | None = None  # fixes the sequence of error decisions (a reproducible chaos run)

    def __post_init__(self) -> None:
        if not 0.0 <= self.error_rate <= 1.0:
            raise ConfigError(f"error_rate must be in [0, 1], but was {self.error_rate}")
        if not 0.0 <= self.garbage_rate <= 1.0:
            raise ConfigError(f"garbage_rate must be in [0, 1], but was {self.garbage_rate}")
        if not 0.0 <= self.latency_ms <= 60_000:
            raise ConfigError(f"latency_ms must be in [0, 60000], but was {self.latency_ms}")
        if self.status not in (429, 500, 502, 503, 504):
            raise ConfigError(f"status must be one of 429, 500, 502, 503, 504, but was {self.status}")
        if self.slot not in ("all", "stable", "canary"):
            raise ConfigError(f"slot must be all, stable or canary, but was {self.slot!r}")

    @property
    def active(self) -> bool:
        return self.error_rate > 0 or self.latency_ms > 0 or self.fail_readyz or self.garbage_rate > 0

    def applies_to(self, slot: str) -> bool:
        return self.slot == "all" or self.slot == slot


class FaultInjector:
    """The process's fault state, shared by the admin API and the middleware."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._config = FaultConfig()
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self.injected_errors = 0
        self.delayed_requests = 0

    @property
    def config(self) -> FaultConfig:
        return self._config

    def set(self, config: FaultConfig) -> None:
        with self._lock:
            if config.seed is not None:
                self._rng = random.Random(config.seed)
            self._config = config

    def clear(self) -> None:
        self._config = FaultConfig()

    def decide(self, slot: str) -> tuple[float, int | None]:
        """(seconds to delay, status to fail with or None) for one request to ``slot``."""
        cfg = self._config
        if not cfg.applies_to(slot):
            return 0.0, None
        with self._lock:
            fail = cfg.error_rate > 0 and self._rng.random() < cfg.error_rate
            if fail:
                self.injected_errors += 1
            if cfg.latency_ms > 0:
                self.delayed_requests += 1
        return cfg.latency_ms / 1000.0, (cfg.status if fail else None)

    def garbage(self, slot: str) -> bool:
        """Whether one request to ``slot`` gets a 200 whose body does not parse (a broken
        serializer, a proxy's error page)."""
        cfg = self._config
        if not cfg.applies_to(slot) or cfg.garbage_rate <= 0:
            return False
        with self._lock:
            return self._rng.random() < cfg.garbage_rate

    def snapshot(self) -> dict[str, Any]:
        return {**asdict(self._config), "active": self._config.active,
                "injected_errors": self.injected_errors, "delayed_requests": self.delayed_requests}


INJECTOR = FaultInjector()


class FaultMiddleware:
    """Delays or fails requests to the mapped routes (route path -> slot)."""

    def __init__(self, app: Callable[..., Awaitable[None]], routes: dict[str, str],
                 injector: FaultInjector = INJECTOR) -> None:
        self.app = app
        self.routes = routes
        self.injector = injector

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        slot = self.routes.get(scope.get("path", "")) if scope["type"] == "http" else None
        if slot is None:
            await self.app(scope, receive, send)
            return
        delay, status = self.injector.decide(slot)
        if delay:
            await asyncio.sleep(delay)
        if status is None and self.injector.garbage(slot):
            body = b"<html>upstream error</html>"
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]})
            await send({"type": "http.response.body", "body": body})
            return
        if status is None:
            await self.app(scope, receive, send)
            return
        body = json.dumps({"error": f"injected fault ({status})"}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if status in (429, 503):
            headers.append((b"retry-after", b"1"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
