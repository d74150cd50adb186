"""Where the gateway finds its scorers, and the clients it needs at start-up."""

from __future__ import annotations

import time
from typing import Any

from healmesh.errors import ConfigError
from healmesh.settings import Settings


def scorer_address(dependency: Any, env_name: str) -> str:
    """A scorer's address: its URL from settings, or the socket BentoML gave it when one
    `bentoml serve` of the mesh started it beside the gateway."""
    if dependency.url:
        return str(dependency.url)
    from bentoml._internal.configuration.containers import BentoMLContainer

    mapping = BentoMLContainer.remote_runner_mapping.get()
    name = dependency.on.name
    if name in mapping:
        return str(mapping[name])
    raise ConfigError(
        f"the gateway has no address for {name}: set {env_name} (a scorer served on its own) "
        f"or serve the mesh bento (`bentoml serve .`), which starts the scorers with the gateway")


def redis_client(settings: Settings) -> Any:
    from healmesh import redis_conn

    return redis_conn.async_client(settings)


def server_started() -> float:
    """When the server of this BentoML worker started (its arbiter, the parent process), on
    this process's monotonic clock. A worker that replaces a killed one counts the readiness
    grace from there, as its siblings do, not from its own start."""
    import psutil

    try:
        parent = psutil.Process().parent()
        started = parent.create_time() if parent is not None else time.time()
    except psutil.Error:
        started = time.time()
    return time.monotonic() - max(0.0, time.time() - started)


def running_workers() -> int | None:
    """How many worker processes of this worker's BentoML service its server runs now (this one
    included): the arbiter's children with the same ``--service-name``. None when that cannot be
    read (not a BentoML worker, or no permission)."""
    import psutil

    try:
        me = psutil.Process()
        parent = me.parent()
        name = _service_name(me.cmdline())
        if parent is None or name is None:
            return None
        count = 0
        for child in parent.children():
            try:
                count += _service_name(child.cmdline()) == name
            except psutil.Error:  # gone meanwhile
                continue
        return count
    except psutil.Error:
        return None


def _service_name(cmdline: list[str]) -> str | None:
    for flag, value in zip(cmdline, cmdline[1:], strict=False):
        if flag == "--service-name":
            return value
    return None
