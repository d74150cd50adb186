"""Where the gateway finds its scorers, and the clients it needs at start-up."""

from __future__ import annotations

from typing import Any

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
    raise RuntimeError(
        f"the gateway has no address for {name}: set {env_name} (a scorer served on its own) "
        f"or serve the mesh bento (`bentoml serve .`), which starts the scorers with the gateway")


def redis_client(settings: Settings) -> Any:
    from healmesh import redis_conn

    return redis_conn.async_client(settings)
