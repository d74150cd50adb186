"""Every Redis client healmesh makes: the gateway's (asyncio, short timeouts), the lifecycle's
and the command line's (blocking). One place decides the URL and the password, so no caller
builds a client of its own and none of them logs the password.

Which Redis: ``HEALMESH_REDIS_URL`` when it is set (a Redis of your own, with
``HEALMESH_REDIS_PASSWORD[_FILE]``). Unset, the one `healmesh up` runs: up records its URL and
password file in ``$HEALMESH_HOME/run/redis.json`` (no secret in it), so `healmesh status`,
`demo` and `rollback`, run from a shell without the environment up gives its children, reach
the same Redis. Children get both as environment variables (``client_env``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

from healmesh.settings import Settings
from healmesh.urls import local_redis_url


@dataclass(frozen=True)
class Managed:
    """The Redis `healmesh up` started for this home, as recorded by it."""

    url: str
    password_file: Path


def state_path(settings: Settings) -> Path:
    return settings.home / "run" / "redis.json"


def explicit(settings: Settings) -> bool:
    """HEALMESH_REDIS_URL was given (environment or argument): used as it is, nothing started."""
    return "redis_url" in settings.model_fields_set


def managed(settings: Settings) -> Managed | None:
    """What `healmesh up` recorded, unless a URL is given explicitly; None when nothing is."""
    if explicit(settings):
        return None
    try:
        data = json.loads(state_path(settings).read_text())
        return Managed(url=str(data["url"]), password_file=Path(data["password_file"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def remember(settings: Settings, state: Managed) -> None:
    path = state_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    path.write_text(json.dumps({"url": state.url, "password_file": str(state.password_file)}) + "\n")


def default_url(settings: Settings) -> str:
    """Where `healmesh up` first tries to run its Redis."""
    return local_redis_url(settings.redis_port)


def password_file(settings: Settings) -> Path | None:
    if settings.redis_password_file is not None:
        return settings.redis_password_file
    state = managed(settings)
    return state.password_file if state else None


def password(settings: Settings) -> str | None:
    """``HEALMESH_REDIS_PASSWORD``, else the content of the password file (``HEALMESH_REDIS_PASSWORD_FILE``
    or the one `healmesh up` recorded)."""
    if settings.redis_password:
        return settings.redis_password
    path = password_file(settings)
    if path is not None:
        return path.read_text().strip() or None
    return None


def url(settings: Settings) -> str:
    if explicit(settings):
        return settings.redis_url
    state = managed(settings)
    return state.url if state else default_url(settings)


def public_url(settings: Settings) -> str:
    """The URL with any password taken out, for status lines and logs."""
    parsed = urlparse(url(settings))
    if parsed.password is None:
        return url(settings)
    netloc = (f"{parsed.username}:***@" if parsed.username else ":***@") + (parsed.hostname or "")
    if parsed.port:
        netloc += f":{parsed.port}"
    return urlunparse(parsed._replace(netloc=netloc))


def client_env(settings: Settings) -> dict[str, str]:
    """What a child process needs to reach this Redis: its URL and the path of the password
    file (a path, so the password itself is in no process's environment)."""
    env = {"HEALMESH_REDIS_URL": url(settings)}
    path = password_file(settings)
    if path is not None:
        env["HEALMESH_REDIS_PASSWORD_FILE"] = str(path)
    return env


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
