"""Real processes for integration tests: an MLflow tracking server, trained models, and
scorers served by `bentoml serve`. All on 127.0.0.1 and free ports; all stopped afterwards."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from healmesh import procs
from healmesh.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
TOKEN = os.environ["HEALMESH_ADMIN_TOKEN"]
LABELLER_TOKEN = os.environ["HEALMESH_LABELLER_TOKEN"]


@pytest.fixture(scope="session")
def mlflow_url(session_dir: Path) -> Iterator[str]:
    server = procs.mlflow_server(procs.free_port(), session_dir / "mlflow-server", session_dir / "logs")
    server.start()
    try:
        server.wait_ready(timeout=120)
        os.environ["MLFLOW_TRACKING_URI"] = server.url
        yield server.url
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        server.stop()


@pytest.fixture(scope="session")
def settings(mlflow_url: str) -> Settings:
    return Settings()


@pytest.fixture(scope="session")
def trained(settings: Settings, artifacts_dir: Path):
    """Version 1 of both models, registered as champion on the real MLflow server."""
    import json

    from healmesh.data import generate
    from healmesh.training import TrainConfig, train

    report = train(generate(60_000, seed=0), settings, TrainConfig(seed=0, mlp_epochs=15))
    (artifacts_dir / "train_report.json").write_text(json.dumps(report.to_dict(), indent=2))
    return report


def scorer_env(mlflow_url: str, **extra: str) -> dict[str, str]:
    return {"MLFLOW_TRACKING_URI": mlflow_url, "HEALMESH_ADMIN_TOKEN": TOKEN, "HEALMESH_ALIAS_POLL_S": "1",
            **extra}


def start_scorer(name: str, session_dir: Path, env: dict[str, str], tag: str = "") -> procs.ServerProcess:
    return procs.bentoml_server(f"{name}{tag}", procs.SCORERS[name], procs.free_port(), session_dir / "logs",
                                env=env, cwd=ROOT).launch()


@pytest.fixture(scope="session")
def scorers(trained, mlflow_url: str, session_dir: Path) -> Iterator[dict[str, procs.ServerProcess]]:
    started: dict[str, procs.ServerProcess] = {}
    try:
        for name in procs.SCORERS:
            started[name] = start_scorer(name, session_dir, scorer_env(mlflow_url))
        yield started
    finally:
        for server in started.values():
            server.stop()


# --- the gateway ---------------------------------------------------------------------------

GATEWAY_FAST = {  # breakers and ramps that move in seconds, so tests need not wait minutes
    "HEALMESH_BREAKER_OPEN_WAIT_S": "2", "HEALMESH_BREAKER_RAMP_STEP_S": "1", "HEALMESH_PROBE_INTERVAL_S": "0.5",
    "HEALMESH_BREAKER_CONSECUTIVE_FAILURES": "5",
}


def start_redis(session_dir: Path, persist: bool = False, port: int | None = None) -> procs.ServerProcess:
    port = port or procs.free_port()
    server = procs.redis_server(port, session_dir / f"redis-{port}", session_dir / "logs", persist=persist)
    return server.launch(timeout=20)


def scorer_urls(scorers: dict[str, procs.ServerProcess]) -> dict[str, str]:
    return {"HEALMESH_XGB_URL": scorers["xgboost"].url, "HEALMESH_TORCH_URL": scorers["pytorch"].url,
            "HEALMESH_FALLBACK_URL": scorers["fallback"].url}


def start_gateway(session_dir: Path, redis_port: int, urls: dict[str, str], tag: str,
                  **extra: str) -> procs.ServerProcess:
    env = {"HEALMESH_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0", "HEALMESH_ADMIN_TOKEN": TOKEN,
           "HEALMESH_KEY_PREFIX": f"hm-{tag}", **GATEWAY_FAST, **urls, **extra}
    return procs.bentoml_server(f"gateway-{tag}", "gateway.service:Gateway", procs.free_port(),
                                session_dir / "logs", env=env, cwd=ROOT).launch()


@pytest.fixture(scope="session")
def redis_srv(session_dir: Path) -> Iterator[procs.ServerProcess]:
    server = start_redis(session_dir)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(scorers, redis_srv, session_dir: Path) -> Iterator[procs.ServerProcess]:
    server = start_gateway(session_dir, redis_srv.port, scorer_urls(scorers), tag="main")
    yield server
    server.stop()


def publish_drift(redis_port: int, prefix: str = "hm-main") -> None:
    """Write a drift result into the control state, as the drift DAG does."""
    import asyncio

    import redis.asyncio as aioredis

    from healmesh.gateway.control import ControlStore, DriftSummary

    async def publish() -> None:
        client = aioredis.Redis(port=redis_port)
        await ControlStore(client, prefix).publish_drift(DriftSummary(
            checked_at=1_700_000_000.0, model_version="1", window_size=5000, decision="drift", share_drifted=0.25,
            scores={"amount": {"psi": 0.31, "ks": 0.2}}))
        await client.aclose()

    asyncio.run(publish())
