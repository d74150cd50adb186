"""Every Redis client healmesh makes: the gateway's (asyncio, short timeouts), the lifecycle's
and the command line's (blocking). One place decides the URL and the password, so no caller
builds a client of its own and none of them logs the password."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse, urlunparse

from healmesh.settings import Settings


def password(settings: Settings) -> str | None:
    """``HEALMESH_REDIS_PASSWORD``, else the content of ``HEALMESH_REDIS_PASSWORD_FILE``."""
    if settings.redis_password:
        return settings.redis_password
    if settings.redis_password_file is not None:
        return settings.redis_password_file.read_text().strip() or None
    return None


def url(settings: Settings) -> str:
    return settings.redis_url


def public_url(settings: Settings) -> str:
    """The URL with any password taken out, for status lines and logs."""
    parsed = urlparse(url(settings))
    if parsed.password is None:
        return url(settings)
    netloc = (f"{parsed.username}:***@" if parsed.username else ":***@") + (parsed.hostname or "")
    if parsed.port:
        netloc += f":{parsed.port}"
    return urlunparse(parsed._replace(netloc=netloc))


def _auth(settings: Settings) -> dict[str, Any]:
    secret = password(settings)
    return {"password": secret} if secret else {}


def sync_client(settings: Settings, *, timeout_s: float = 10.0) -> Any:
    """A blocking client (lifecycle tasks, CLI, tests)."""
    import redis

    return redis.Redis.from_url(url(settings), socket_timeout=timeout_s, socket_connect_timeout=min(5.0, timeout_s),
                                **_auth(settings))


def async_client(settings: Settings) -> Any:
    """The gateway's client: a dead Redis must be noticed in about a second, not block requests."""
    import redis.asyncio as aioredis

    return aioredis.Redis.from_url(url(settings), socket_timeout=1.0, socket_connect_timeout=1.0,
                                   health_check_interval=5, decode_responses=False, **_auth(settings))
