"""The MLflow model registry, as healmesh uses it.

The registry is the source of truth for versions: alias ``champion`` is what a scorer's
stable slot serves, ``challenger`` what its canary slot serves.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from healmesh.errors import NoModel
from healmesh.settings import Settings

if TYPE_CHECKING:
    import httpx

    from healmesh.models.bundle import Bundle


@dataclass(frozen=True)
class VersionRef:
    name: str
    version: str
    run_id: str | None
    source: str


def configure_mlflow(settings: Settings) -> None:
    """Point the mlflow library at the configured store; quick failures instead of long retries."""
    import mlflow

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(settings.registry_timeout_s)))
    uri = settings.tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)


_health_lock = threading.Lock()
_health: tuple[int, httpx.Client] | None = None  # (pid, client)


def _health_client() -> httpx.Client:
    """The process's one client for the registry health check (a follower calls it every poll).

    Why not ``httpx.get``: each call builds a Client with an SSL context holding the whole CA
    bundle (even for http://), left in a reference cycle that only the cyclic collector frees,
    and serving processes collect rarely (``heap.GC_THRESHOLDS``). Measured: +833 KB
    RSS per poll (9 KB of it Python heap, the rest native), 10 MB/min on an idle scorer at the
    5 s default, until the first young-generation collection about an hour later.

    No keep-alive, so a connection the server closed between polls never reads as
    "unreachable"; keyed by pid, so a forked child never shares its parent's client."""
    import httpx

    global _health
    with _health_lock:
        if _health is None or _health[0] != os.getpid():
            _health = (os.getpid(), httpx.Client(limits=httpx.Limits(max_keepalive_connections=0)))
        return _health[1]


def is_reachable(settings: Settings) -> bool:
    """Whether a registry is there to ask: a SQLite store that exists, or a server that answers."""
    uri = settings.tracking_uri
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).exists()
    if uri.startswith(("http://", "https://")):
        import httpx

        try:
            return _health_client().get(uri.rstrip("/") + "/health",
                                         timeout=settings.registry_timeout_s).status_code == 200
        except httpx.HTTPError:
            return False
    return urlparse(uri).scheme in ("postgresql", "mysql", "file", "")


def client(settings: Settings):  # -> mlflow.MlflowClient
    from mlflow import MlflowClient

    configure_mlflow(settings)
    return MlflowClient(tracking_uri=settings.tracking_uri, registry_uri=settings.tracking_uri)


def ensure_experiment(settings: Settings) -> str:
    import mlflow

    configure_mlflow(settings)
    existing = mlflow.get_experiment_by_name(settings.experiment_name)
    if existing is not None:
        return existing.experiment_id
    location = None
    if not settings.tracking_uri.startswith(("http://", "https://")):
        # a local store: keep artifacts under HEALMESH_HOME, not in the working directory
        settings.artifact_root.mkdir(parents=True, exist_ok=True)
        location = settings.artifact_root.as_uri()
    return mlflow.create_experiment(settings.experiment_name, artifact_location=location)


def version_by_alias(settings: Settings, name: str, alias: str) -> VersionRef | None:
    from mlflow.exceptions import MlflowException

    try:
        mv = client(settings).get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise
    return VersionRef(name=name, version=str(mv.version), run_id=mv.run_id, source=mv.source)


def set_alias(settings: Settings, name: str, alias: str, version: str) -> None:
    client(settings).set_registered_model_alias(name, alias, version)


def delete_alias(settings: Settings, name: str, alias: str) -> None:
    client(settings).delete_registered_model_alias(name, alias)


def download_model(settings: Settings, name: str, version: str) -> Path:
    """The model directory of ``name`` version ``version``, cached under HEALMESH_HOME."""
    import mlflow

    configure_mlflow(settings)
    target = settings.cache_dir / "models" / name / str(version)
    if (target / "MLmodel").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=target.parent))
    try:
        got = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(staging)))
        # rename is atomic: a reader never sees a half-downloaded model
        os.replace(got, target) if got != staging else os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def load_version(settings: Settings, name: str, version: str) -> Bundle:
    """The healmesh bundle of ``name`` version ``version`` (downloaded once, then from the cache)."""
    from healmesh.models.bundle import find_bundle, load_bundle

    return load_bundle(find_bundle(download_model(settings, name, version)))


def download_reference(settings: Settings, run_id: str):  # -> pandas.DataFrame
    """The reference sample logged with a training run (``reference/reference.parquet``)."""
    import mlflow
    import pandas as pd

    configure_mlflow(settings)
    with tempfile.TemporaryDirectory() as tmp:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="reference/reference.parquet",
                                                   dst_path=tmp)
        return pd.read_parquet(path)


@dataclass(frozen=True)
class VersionInfo:
    name: str
    version: str
    run_id: str | None
    metrics: dict[str, float]
    tags: dict[str, str]


def version_exists(settings: Settings, name: str, version: str) -> bool | None:
    """Whether ``name`` has ``version``; None when the registry cannot be asked."""
    from mlflow.exceptions import MlflowException

    if not is_reachable(settings):
        return None
    try:
        client(settings).get_model_version(name, version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return False
        return None
    except Exception:  # noqa: BLE001 - an unreachable or broken registry is "cannot tell"
        return None
    return True


def version_info(settings: Settings, name: str, version: str) -> VersionInfo:
    c = client(settings)
    mv = c.get_model_version(name, version)
    metrics = dict(c.get_run(mv.run_id).data.metrics) if mv.run_id else {}
    return VersionInfo(name=name, version=str(mv.version), run_id=mv.run_id, metrics=metrics, tags=dict(mv.tags))


def tag_version(settings: Settings, name: str, version: str, tags: dict[str, str]) -> None:
    c = client(settings)
    for k, v in tags.items():
        c.set_model_version_tag(name, version, k, v)


def reference_for_version(settings: Settings, name: str, version: str,
                          run_id: str | None = None):  # -> pandas.DataFrame
    """The reference sample logged with a version's run (``run_id`` when the caller knows it),
    cached under HEALMESH_HOME."""
    import pandas as pd

    path = settings.cache_dir / "reference" / name / f"{version}.parquet"
    if path.exists():
        return pd.read_parquet(path)
    run_id = run_id or version_info(settings, name, version).run_id
    if run_id is None:
        raise NoModel(f"{name} v{version} has no run: no reference sample")
    frame = download_reference(settings, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    return frame
