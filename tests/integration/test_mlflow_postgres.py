"""The MLflow tracking server on PostgreSQL (the metadata store a cluster uses), with artifacts
through its proxy: a run logged, a model version registered and aliased, all read back.

The test makes its own database (random name) on the machine's PostgreSQL and drops it after.
No PostgreSQL answering is a failure that says so, never a skip: CI runs where one runs."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from healmesh.ops import procs

pytestmark = pytest.mark.integration
ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture
def database() -> Iterator[str]:
    import psycopg

    name = f"healmesh_mlflow_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"no PostgreSQL answers at {ADMIN_DSN} (user postgres, trust auth); this test needs one "
                    f"(apt-get install postgresql, then start it): {exc}")
    try:
        admin.execute(f'CREATE DATABASE "{name}"')
        yield name
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def test_mlflow_on_postgresql_logs_registers_and_reads_back(database: str, tmp_path: Path):
    from mlflow.tracking import MlflowClient

    server = procs.mlflow_server(procs.free_port(), tmp_path / "mlflow", tmp_path / "logs",
                                 backend_uri=f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}")
    server.launch(timeout=180)
    try:
        client = MlflowClient(tracking_uri=server.url, registry_uri=server.url)
        experiment = client.create_experiment("on-postgres")
        assert client.get_experiment(experiment).artifact_location.startswith("mlflow-artifacts:/")
        run = client.create_run(experiment, run_name="pg", tags={"healmesh.test": "postgres"})
        client.log_param(run.info.run_id, "rows", 123)
        client.log_metric(run.info.run_id, "auc", 0.91)
        client.log_text(run.info.run_id, "the model, in a word", "model/MLmodel.txt")
        client.set_terminated(run.info.run_id)
        client.create_registered_model("pg-model")
        version = client.create_model_version("pg-model", f"runs:/{run.info.run_id}/model", run.info.run_id)
        client.set_registered_model_alias("pg-model", "champion", version.version)

        again = MlflowClient(tracking_uri=server.url, registry_uri=server.url)  # a fresh client: read from the store
        read = again.get_run(run.info.run_id)
        assert read.data.params == {"rows": "123"} and read.data.metrics == {"auc": 0.91}
        assert read.data.tags["healmesh.test"] == "postgres" and read.info.status == "FINISHED"
        champion = again.get_model_version_by_alias("pg-model", "champion")
        assert champion.version == version.version and champion.run_id == run.info.run_id
        downloaded = again.download_artifacts(run.info.run_id, "model/MLmodel.txt", str(tmp_path / "dl"))
        assert Path(downloaded).read_text() == "the model, in a word"
        # the artifact went through the proxy into the server's store, not into a client-side folder
        assert list((tmp_path / "mlflow" / "artifacts").rglob("MLmodel.txt"))
    finally:
        server.stop()
