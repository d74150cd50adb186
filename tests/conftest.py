"""Test session set-up: every test run gets its own HEALMESH_HOME and BENTOML_HOME, so it never
touches a developer's models, and a real MLflow tracking server (started here, stopped after).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"

# Before anything imports healmesh.settings (it caches the environment it sees).
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="healmesh-tests-"))
os.environ["HEALMESH_HOME"] = str(_SESSION_DIR / "home")
os.environ["BENTOML_HOME"] = str(_SESSION_DIR / "bentoml")
os.environ["HEALMESH_ADMIN_TOKEN"] = "test-admin-token-0123"
os.environ["HEALMESH_LABELLER_TOKEN"] = "test-labeller-token-0123"
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("HEALMESH_MLFLOW_TRACKING_URI", None)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# Airflow reads its home when first imported: a private one, migrated by the lifecycle tests.
os.environ["AIRFLOW_HOME"] = str(_SESSION_DIR / "airflow")
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["HEALMESH_DRIFT_REPORTS_DIR"] = str(_SESSION_DIR / "drift_reports")
sys.path.insert(0, str(ROOT))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # a failed run keeps every server's log (gateway, scorers, Redis, MLflow) for the post-mortem
    if exitstatus not in (0, 5) and (_SESSION_DIR / "logs").is_dir():
        kept = ARTIFACTS / "server-logs"
        shutil.rmtree(kept, ignore_errors=True)
        shutil.copytree(_SESSION_DIR / "logs", kept)
        print(f"\nserver logs kept in {kept}")
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def session_dir() -> Path:
    return _SESSION_DIR


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
