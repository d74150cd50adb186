"""Drift reports cross no shared disk (issue 13, item 1): the drift check stores its report in
MLflow (a run of the drift experiment, through the tracking server's artifact proxy) and lists it
in the control state; the gateway's /ui serves the index from that listing and the report from
MLflow, with the folder the check mirrored into deleted and the gateway pointed at another,
empty one. Real MLflow server, Redis and gateway."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis

from healmesh.control import keys
from healmesh.control.sync_store import SyncControlStore
from healmesh.data import generate
from healmesh.errors import NoModel
from healmesh.ops import procs
from healmesh.settings import Settings, get_settings
from healmesh.training import TrainConfig, train
from healmesh.urls import local_redis_url, local_url

from .conftest import GATEWAY_FAST, ROOT, TOKEN

pytestmark = pytest.mark.integration
PREFIX = "hm-reports"
NAMES = {"HEALMESH_XGB_REGISTERED_NAME": "reports-xgboost", "HEALMESH_MLP_REGISTERED_NAME": "reports-mlp",
         "HEALMESH_EXPERIMENT_NAME": "reports-fraud"}


def feature_log(client: redis.Redis, rows: int, seed: int) -> None:
    """``rows`` primary answers of the champion in the feature stream, as the gateway logs them."""
    frame = generate(rows, seed=seed)
    rng = np.random.default_rng(seed)
    now = time.time()
    for i, row in enumerate(frame.drop(columns=["is_fraud"]).to_dict("records")):
        ts = now - rows + i
        data = {"variant": "xgboost_stable", "model": "xgboost", "model_version": "1",
                "probability": float(rng.uniform(0, 0.2)), "label": 0,
                "features": {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}}
        client.xadd(keys.stream(PREFIX), {"request_id": keys.new_request_id(ts), "kind": "primary",
                                          "ts": f"{ts:.3f}", "data": json.dumps(data)})


@pytest.fixture(scope="module")
def checked(mlflow_url: str, redis_srv, tmp_path_factory) -> Iterator[dict]:
    """A champion, a window of traffic, two drift checks (one with a report, one too small for
    one) mirrored into a folder that is then deleted."""
    mirror = tmp_path_factory.mktemp("drift") / "drift_reports"
    mp = pytest.MonkeyPatch()
    for k, v in {**NAMES, "HEALMESH_KEY_PREFIX": PREFIX, "HEALMESH_DRIFT_REPORTS_DIR": str(mirror),
                 "HEALMESH_REDIS_URL": local_redis_url(redis_srv.port),
                 # a host shared by several test runs can keep the server busy past the 5 s default
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}.items():
        mp.setenv(k, v)
    get_settings.cache_clear()
    try:
        settings = Settings()
        train(generate(6_000, seed=0), settings, TrainConfig(seed=0, mlp_epochs=1, save_to_bentoml=False))
        client = redis.Redis(port=redis_srv.port)
        feature_log(client, 1_000, seed=7)
        from healmesh.lifecycle.monitor import run_drift_check

        full = run_drift_check(settings, client, window_records=1_000)
        time.sleep(1.1)  # report ids have a resolution of one second
        small = run_drift_check(settings, client, window_records=100)
        assert full["report"] and small["report"] is None and small["decision"] == "insufficient_data"
        # the mirror was written (the local default), then goes: nothing may need it
        assert (mirror / f"{full['check_id']}.html").is_file() and (mirror / "index.html").is_file()
        shutil.rmtree(mirror)
        yield {"settings": settings, "full": full, "small": small, "redis": client}
        client.close()
    finally:
        mp.undo()
        get_settings.cache_clear()


@pytest.fixture(scope="module")
def gateway_elsewhere(checked, mlflow_url: str, redis_srv, session_dir: Path,
                      tmp_path_factory) -> Iterator[procs.ServerProcess]:
    """A gateway with another, empty reports folder and another home: it sees no file the check wrote.
    No scorer answers it (none is needed for /ui), so it is started once it is live."""
    empty = tmp_path_factory.mktemp("gateway-home")
    dead = local_url(procs.free_port())  # nobody listens there
    env = {"HEALMESH_REDIS_URL": local_redis_url(redis_srv.port), "HEALMESH_ADMIN_TOKEN": TOKEN,
           "HEALMESH_KEY_PREFIX": PREFIX, "HEALMESH_HOME": str(empty / "home"),
           "HEALMESH_DRIFT_REPORTS_DIR": str(empty / "drift_reports"), "MLFLOW_TRACKING_URI": mlflow_url,
           "HEALMESH_XGB_URL": dead, "HEALMESH_TORCH_URL": dead, "HEALMESH_FALLBACK_URL": dead, **GATEWAY_FAST}
    server = dataclasses.replace(procs.bentoml_server("gateway-reports", "gateway.service:Gateway", procs.free_port(),
                                                      session_dir / "logs", env=env, cwd=ROOT), ready_path="/livez")
    server.launch()
    yield server
    server.stop()


def test_the_report_lives_in_mlflow_behind_the_artifact_proxy_and_is_listed_in_the_control_state(checked):
    from healmesh.lifecycle import report_store

    settings, full, small = checked["settings"], checked["full"], checked["small"]
    listed = {r.id: r for r in SyncControlStore(checked["redis"], PREFIX).reports()}
    assert set(listed) >= {full["check_id"], small["check_id"]}
    record = listed[full["check_id"]]
    assert record.has_html and record.run_id == full["run_id"] and not listed[small["check_id"]].has_html
    assert record.artifact_uri and record.artifact_uri.startswith("mlflow-artifacts:/")  # proxied, not a file path
    found = report_store.find_report(settings, full["check_id"])
    assert found.run_id == full["run_id"]
    got = report_store.download(settings, found.run_id, Path(str(settings.home)) / "downloaded")
    assert "id='healmesh-decision'" in got["html"].read_text()
    assert json.loads(got["json"].read_text())["name"] == full["check_id"]
    with pytest.raises(NoModel):
        report_store.find_report(settings, "20000101T000000Z_v1")


def test_the_gateway_serves_the_report_and_the_index_without_the_folder(checked, gateway_elsewhere):
    full, small = checked["full"], checked["small"]
    url = gateway_elsewhere.url + "/ui/reports/"
    page = httpx.get(url + f"{full['check_id']}.html", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "id='healmesh-decision'" in page.text and full["headline"][:40] in page.text
    index = httpx.get(url + "index.html", timeout=30)
    assert index.status_code == 200
    assert f'href="{full["check_id"]}.html"' in index.text and f"id='{small['check_id']}'" in index.text
    # listed without a report, unknown, and not a report name: all 404
    for name in (f"{small['check_id']}.html", "20000101T000000Z_v1.html", "..%2F..%2Fetc%2Fpasswd"):
        assert httpx.get(url + name, timeout=30).status_code == 404, name
    # the status page links the latest check's report where the route serves it
    status = httpx.get(gateway_elsewhere.url + "/ui/", timeout=30).text
    assert "/ui/reports/index.html" in status


def test_retrain_refuses_a_drift_check_mlflow_does_not_have_before_reading_anything(checked):
    from healmesh.lifecycle.retrain import run_retrain

    # no Redis: the lookup must come before the feature log is read
    with pytest.raises(NoModel, match="20000101T000000Z_v1"):
        run_retrain(checked["settings"], None, trigger="manual", drift_check_id="20000101T000000Z_v1")
