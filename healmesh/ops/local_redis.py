"""The Redis `healmesh up` runs when ``HEALMESH_REDIS_URL`` is not set.

It listens on 127.0.0.1, requires a password (``credentials.redis_password_file``: generated
0600 under ``$HEALMESH_HOME/secrets``), keeps an append-only file synced every second (a
restart loses at most a second of writes, none of what was acknowledged before that) and caps
its memory at ``redis_maxmemory`` with ``volatile-ttl``: only keys with a TTL (per-request
records) may be evicted; control state, audit and streams carry none and never are.

It shares no Redis it did not start: when ``redis_port`` answers with a Redis that does not
take our password (a machine's own Redis without one, say), ours runs on the next free port
above. A Redis that takes our password is ours, and a second `up` reuses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlparse

from healmesh import credentials, redis_conn
from healmesh.errors import ConfigError
from healmesh.ops import procs
from healmesh.settings import Settings
from healmesh.urls import LOCALHOST, local_redis_url

ALTERNATIVES = 20  # ports tried above redis_port
EVICTION_POLICY = "volatile-ttl"


class Found(StrEnum):
    FREE = "free"
    OURS = "ours"
    FOREIGN = "foreign"  # a Redis without our password, or not a Redis at all


def probe(port: int, password: str) -> Found:
    """Who holds 127.0.0.1:``port``: nobody, a Redis that requires our password, anything else.
    Both checks are needed: a Redis without a password accepts any password sent with HELLO."""
    if not procs.port_open(port):
        return Found.FREE
    if _pings(port, None):
        return Found.FOREIGN
    return Found.OURS if _pings(port, password) else Found.FOREIGN


def _pings(port: int, password: str | None) -> bool:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # no retries: an authentication error is a ConnectionError to redis-py, retried with backoff
    client = redis.Redis(host=LOCALHOST, port=port, password=password, socket_timeout=2.0,
                         socket_connect_timeout=2.0, retry=Retry(NoBackoff(), 0))
    try:
        return bool(client.ping())
    except redis.RedisError:  # NOAUTH, WRONGPASS, not a Redis at all
        return False
    finally:
        client.close()


@dataclass(frozen=True)
class Outcome:
    url: str
    server: procs.ServerProcess | None  # to start (not started yet); None: ours runs already


def candidates(settings: Settings) -> list[int]:
    """The port recorded last time first (the URL stays put), then redis_port and the ones above."""
    ports = list(range(settings.redis_port, min(settings.redis_port + 1 + ALTERNATIVES, 65_536)))
    state = redis_conn.managed(settings)
    recorded = urlparse(state.url).port if state else None
    return list(dict.fromkeys([recorded, *ports] if recorded else ports))


def _password(settings: Settings) -> str:
    if settings.redis_password:
        raise ConfigError("HEALMESH_REDIS_PASSWORD is for a Redis of your own (with HEALMESH_REDIS_URL); the Redis "
                          "healmesh up runs reads its password from a file: set HEALMESH_REDIS_PASSWORD_FILE or "
                          "leave both unset (one is generated)")
    value = credentials.redis_password_file(settings).read_text().strip()
    if not value:
        raise ConfigError(f"the Redis password file {credentials.redis_password_file(settings)} is empty")
    return value


def ensure(settings: Settings) -> Outcome:
    """Find our Redis or the port to run it on (the caller starts ``server``, under the
    supervisor), and record where it is for the command line."""
    password = _password(settings)
    ports = candidates(settings)
    for port in ports:
        found = probe(port, password)
        if found is Found.FOREIGN:
            continue
        server = configure(settings, port, password) if found is Found.FREE else None
        url = local_redis_url(port)
        redis_conn.remember(settings, redis_conn.Managed(url, credentials.redis_password_file(settings)))
        return Outcome(url=url, server=server)
    raise procs.ServerFailed(f"no port for healmesh's Redis: {ports[0]} to {ports[-1]} are all held by others "
                             "(set HEALMESH_REDIS_PORT, or HEALMESH_REDIS_URL for a Redis of your own)")


def configure(settings: Settings, port: int, password: str) -> procs.ServerProcess:
    """Our Redis on ``port``, ready to start (its config file written 0600)."""
    server = procs.redis_server(port, settings.home / "redis", settings.home / "logs", persist=True, password=password,
                                appendfsync="everysec", maxmemory=settings.redis_maxmemory,
                                maxmemory_policy=EVICTION_POLICY)
    server.name = "redis"
    server.log_path = settings.home / "logs" / "redis.log"
    return server


def describe(settings: Settings) -> str:
    """The status line: the URL in use (never its password), whose Redis it is, whether it answers."""
    if redis_conn.explicit(settings):
        whose = "external (HEALMESH_REDIS_URL)"
        if settings.redis_password_file is not None:
            whose += f", password in {settings.redis_password_file}"
    elif (state := redis_conn.managed(settings)) is not None:
        whose = f"ours (started by healmesh up), password in {state.password_file}"
    else:
        whose = "not started by healmesh up"
    return f"{redis_conn.public_url(settings)}  {whose}  {_health(settings)}"


def _health(settings: Settings) -> str:
    import redis

    try:
        client = redis_conn.sync_client(settings, timeout_s=2.0)
        try:
            client.ping()
            return "up"
        finally:
            client.close()
    except redis.AuthenticationError:
        return "refuses this password"
    except (redis.RedisError, OSError):
        return "DOWN"
