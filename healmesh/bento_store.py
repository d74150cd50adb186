"""Model bundles in the BentoML model store, so that a built bento carries its model."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

XGB_BENTO_MODEL = "healmesh-xgboost"
MLP_BENTO_MODEL = "healmesh-mlp"


@dataclass(frozen=True)
class StoredBundle:
    tag: str
    path: Path
    registry_version: str | None


def save(name: str, bundle_dir: Path, *, registry_version: str | None, kind: str) -> str:
    import bentoml

    metadata = {"kind": kind, "registry_version": registry_version or ""}
    with bentoml.models.create(name, labels={"project": "healmesh", "kind": kind}, metadata=metadata) as bm:
        shutil.copytree(bundle_dir, bm.path, dirs_exist_ok=True)
    return str(bm.tag)


def describe(stored_model) -> StoredBundle:  # stored_model: bentoml.Model
    version = str(stored_model.info.metadata.get("registry_version") or "") or None
    return StoredBundle(tag=str(stored_model.tag), path=Path(stored_model.path), registry_version=version)


def builtin_reference(name: str):  # -> bentoml.models.BentoModel | None
    """The scorer's built-in model, declared only when the store has one.

    BentoML resolves declared models before it serves: a scorer declaring a model the store
    lacks would not start even with a registry champion to serve. Built bentos always carry
    theirs (the build needs it); a source checkout without a trained model serves from the
    registry only."""
    import logging

    import bentoml

    if not in_store(name):
        logging.getLogger("healmesh.scorer").warning(
            "no %s in the BentoML model store: this scorer can only serve the registry's champion", name)
        return None
    return bentoml.models.BentoModel(f"{name}:latest")


def in_store(name: str) -> bool:
    """Whether the local BentoML model store holds a version of ``name``."""
    import bentoml

    try:
        bentoml.models.get(f"{name}:latest")
    except bentoml.exceptions.NotFound:
        return False
    return True
