"""`bentoml build` of the mesh and of each scorer, offline, and the built mesh served whole."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import httpx
import pytest

from healmesh.ops import procs
from healmesh.urls import local_redis_url, local_url

from .conftest import ROOT, TOKEN
from .load import transactions

pytestmark = pytest.mark.integration


def service_models(tag: str) -> set[str]:
    import bentoml

    return {str(m.tag).split(":")[0] for svc in bentoml.get(tag).info.services for m in svc.models}


def export(tag: str, into: Path) -> Path:
    """`bentoml export` (what `bentoml containerize` and `bentoml push` ship), unpacked."""
    archive = into / f"{tag.replace(':', '-')}.bento"
    subprocess.run([sys.executable, "-m", "bentoml", "export", tag, str(archive)], check=True, capture_output=True)
    out = into / tag.replace(":", "-")
    out.mkdir()
    with tarfile.open(archive) as tar:
        tar.extractall(out, filter="data")
    return out


def build(bentofile: str) -> tuple[str, Path]:
    done = subprocess.run([sys.executable, "-m", "bentoml", "build", "-f", bentofile, "."], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "BENTOML_DO_NOT_TRACK": "true"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    tag = re.search(r'Successfully built Bento\(tag="([^"]+)"\)', done.stdout).group(1)
    import bentoml

    return tag, Path(bentoml.get(tag).path)


@pytest.fixture(scope="module")
def mesh_bento(trained):
    return build("bentofile.yaml")


def test_mesh_bento_carries_both_models_and_the_code(mesh_bento, tmp_path):
    """The mesh bento's entry is the gateway; its scorers carry their models."""
    tag, path = mesh_bento
    assert service_models(tag) == {"healmesh-xgboost", "healmesh-mlp"}
    assert (path / "src" / "gateway" / "service.py").exists()
    assert (path / "src" / "bentos" / "xgboost_scorer.py").exists()
    assert (path / "src" / "healmesh" / "schema.py").exists()
    assert not (path / "src" / "tests").exists()
    reqs = (path / "env" / "python" / "requirements.txt").read_text()
    assert "torch==2.13.0" in reqs and "xgboost==3.2.0" in reqs
    shipped = export(tag, tmp_path)
    assert list((shipped / "models" / "healmesh-xgboost").rglob("model.ubj"))
    assert list((shipped / "models" / "healmesh-mlp").rglob("state_dict.pt"))


@pytest.mark.parametrize("name,models,ml", [("xgboost_scorer", {"healmesh-xgboost"}, True),
                                             ("torch_scorer", {"healmesh-mlp"}, True),
                                             ("fallback_scorer", set(), False)])
def test_each_scorer_builds_alone(trained, name, models, ml):
    tag, path = build(f"bentos/{name}.bentofile.yaml")
    assert service_models(tag) == models
    reqs = (path / "env" / "python" / "requirements.txt").read_text()
    assert ("xgboost" in reqs) == ml and ("torch" in reqs) == ml


def test_built_mesh_serves_gateway_and_scorers_from_its_own_models(mesh_bento, redis_srv, session_dir, tmp_path):
    """One `bentoml serve` of the exported bento (empty model store, no registry) runs the
    gateway and the three scorers under one supervisor; the gateway reaches them through the
    BentoML composition, not through URLs."""
    tag, _ = mesh_bento
    shipped = export(tag, tmp_path)
    port = procs.free_port()
    dead_registry = local_url(procs.free_port())
    server = procs.ServerProcess(
        name="mesh-bento", port=port, log_path=session_dir / "logs" / "mesh-bento.log", cwd=tmp_path,
        cmd=[sys.executable, "-m", "bentoml", "serve", str(shipped), "--host", "127.0.0.1", "-p", str(port)],
        env={"MLFLOW_TRACKING_URI": dead_registry, "HEALMESH_ADMIN_TOKEN": TOKEN,
             "HEALMESH_REDIS_URL": local_redis_url(redis_srv.port), "HEALMESH_KEY_PREFIX": "hm-mesh",
             "BENTOML_HOME": str(tmp_path / "empty-bentoml-home")},
    )
    server.start()
    try:
        server.wait_ready(timeout=180)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        upstreams = httpx.get(server.url + "/api/v1/admin/state", headers=auth).json()["upstreams"]
        assert all(addr.startswith("file://") and addr.endswith(".sock") for addr in upstreams.values()), upstreams
        rows = [{k: v for k, v in tx.items() if k != "card_id"} for tx in transactions(60, seed=6)]
        # ready means the model variants answer: the composed scorers start after the gateway, and a
        # gateway that said ready before them had its first answers come from the fallback
        assert httpx.get(server.url + "/readyz").status_code == 200
        answers = [httpx.post(server.url + "/api/v1/predict", json=row, timeout=30).json() for row in rows]
        calls = [line for line in httpx.get(server.url + "/metrics").text.splitlines()
                 if line.startswith("healmesh_gateway_upstream_calls_total")]
        assert {a["variant"] for a in answers} == {"xgboost_stable", "pytorch"}, calls
        assert not any(a["degraded"] or a["fallback"] for a in answers), calls
        assert {a["model"] for a in answers} == {"xgboost", "mlp"}
    finally:
        server.stop()
