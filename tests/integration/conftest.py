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
    server = procs.bentoml_server(f"{name}{tag}", procs.SCORERS[name], procs.free_port(), session_dir / "logs",
                                  env=env, cwd=ROOT)
    server.start()
    try:
        return server.wait_ready(timeout=120)
    except Exception:
        server.stop()
        raise


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
