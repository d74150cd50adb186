"""The three scorers, each served by a real `bentoml serve` process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from healmesh import project, rules
from healmesh.data import generate
from healmesh.ops import procs
from healmesh.schema import Schema
from healmesh.settings import Settings, get_settings
from healmesh.training import TrainConfig, train
from healmesh.urls import local_url

from .conftest import ROOT, TOKEN, scorer_env, start_scorer
from .load import hammer, run, transactions

pytestmark = pytest.mark.integration
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MODEL_NAMES = {"xgboost": "xgboost", "pytorch": "mlp", "fallback": "rules"}
EXAMPLES = {"fraud": ROOT / "examples" / "fraud" / "healmesh.yaml",
            "weather": ROOT / "examples" / "weather" / "healmesh.yaml"}


def batch_histogram(metrics_text: str, method: str = "predict") -> dict[str, float]:
    out = {}
    for m in re.finditer(r'^bentoml_service_adaptive_batch_size_bucket\{([^}]*)\} (\S+)$', metrics_text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if labels.get("method_name") == method:
            out[labels["le"]] = out.get(labels["le"], 0.0) + float(m.group(2))
    return out


@pytest.mark.parametrize("name", list(procs.SCORERS))
def test_64_concurrent_clients_all_answered_and_batched(scorers, name):
    server = scorers[name]
    before = batch_histogram(httpx.get(server.url + "/metrics").text)
    bodies = [{"rows": [tx]} for tx in transactions(1_280, seed=3)]
    replies = run(server.url + "/predict", bodies, concurrency=64)
    assert len(replies) == 1_280
    assert {r.status for r in replies} == {200}, [r.body for r in replies if r.status != 200][:3]
    for r in replies:
        (row,) = r.body
        assert 0.0 <= row["probability"] <= 1.0 and row["label"] in (0, 1)
        assert row["model"] == MODEL_NAMES[name] and row["model_version"]
    text = httpx.get(server.url + "/metrics").text
    after = batch_histogram(text)
    assert after, text[-3000:]
    batches = after["+Inf"] - before.get("+Inf", 0.0)
    single = after["1.0"] - before.get("1.0", 0.0)
    print(f"\n{name}: {batches:.0f} batches for 1280 requests, {single:.0f} of size 1")
    assert batches > 0 and batches - single > 0, "no batch larger than one request"
    assert batches < 1_280


def test_a_batch_request_scores_every_row_in_order(scorers):
    rows = transactions(50, seed=8)
    r = httpx.post(scorers["xgboost"].url + "/predict", json={"rows": rows})
    assert r.status_code == 200 and len(r.json()) == 50
    singles = [httpx.post(scorers["xgboost"].url + "/predict", json={"rows": [row]}).json()[0] for row in rows[:5]]
    assert [s["probability"] for s in singles] == pytest.approx([x["probability"] for x in r.json()[:5]])


@pytest.mark.parametrize("name", list(procs.SCORERS))
def test_health_endpoints_and_model_version_metric(scorers, name):
    url = scorers[name].url
    assert httpx.get(url + "/livez").status_code == 200
    assert httpx.get(url + "/readyz").status_code == 200
    text = httpx.get(url + "/metrics").text
    assert "bentoml_service_request_total" in text
    assert f'healmesh_fault_error_rate{{scorer="{name}"}} 0.0' in text
    if name != "fallback":
        assert re.search(rf'healmesh_model_info\{{scorer="{name}",slot="stable",model="{MODEL_NAMES[name]}",'
                         r'version="1",source="mlflow"\} 1.0', text), text[-800:]


def test_bad_rows_are_refused_with_the_field_named(scorers):
    tx = transactions(1, seed=1)[0]
    r = httpx.post(scorers["xgboost"].url + "/predict", json={"rows": [tx | {"hour": 99}]})
    assert r.status_code == 400
    assert any("hour" in map(str, d["loc"]) for d in r.json()["detail"])


@pytest.mark.parametrize("name", list(procs.SCORERS))
def test_admin_api_needs_the_token(scorers, name):
    url = scorers[name].url + "/admin/state"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer wrong-token-000"}).status_code == 401
    r = httpx.get(url, headers=AUTH)
    assert r.status_code == 200 and r.json()["scorer"] == name
    assert httpx.put(scorers[name].url + "/admin/faults", json={"error_rate": 1.0}).status_code == 401
    assert httpx.post(scorers[name].url + "/predict", json={"rows": transactions(1)}).status_code == 200


def test_fault_injection_errors_latency_slots_and_readiness(scorers):
    url = scorers["fallback"].url
    body = {"rows": transactions(1, seed=2)}
    try:
        assert httpx.put(url + "/admin/faults", headers=AUTH, json={"error_rate": 2}).status_code == 422
        r = httpx.put(url + "/admin/faults", headers=AUTH, json={"error_rate": 1.0, "status": 503})
        assert r.status_code == 200 and r.json()["faults"]["active"]
        failed = httpx.post(url + "/predict", json=body)
        assert failed.status_code == 503 and failed.headers["retry-after"] == "1"
        assert httpx.get(url + "/readyz").status_code == 200  # errors alone keep it ready

        httpx.put(url + "/admin/faults", headers=AUTH, json={"latency_ms": 300})
        t0 = time.perf_counter()
        assert httpx.post(url + "/predict", json=body).status_code == 200
        assert time.perf_counter() - t0 >= 0.3

        httpx.put(url + "/admin/faults", headers=AUTH, json={"error_rate": 0.5})
        codes = [httpx.post(url + "/predict", json=body).status_code for _ in range(200)]
        assert 60 < codes.count(500) < 140 and codes.count(200) + codes.count(500) == 200

        httpx.put(url + "/admin/faults", headers=AUTH, json={"fail_readyz": True})
        assert httpx.get(url + "/readyz").status_code == 503
        assert "healmesh_fault_injected_errors_total" in httpx.get(url + "/metrics").text
    finally:
        assert httpx.delete(url + "/admin/faults", headers=AUTH).status_code == 200
    assert httpx.get(url + "/readyz").status_code == 200
    assert httpx.post(url + "/predict", json=body).status_code == 200


def _maps(pid: int) -> set[str]:
    paths = set()
    for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            paths |= {m.path for m in proc.memory_maps()}
    return paths


# what a process maps once it imported the framework (compiled extensions and shared libraries)
ML_FRAMEWORKS = {"xgboost": r"libxgboost|/xgboost/", "torch": r"libtorch|/torch/",
                 "sklearn": r"/sklearn/|/scikit_learn\.libs/"}


def ml_libs(paths: set[str]) -> dict[str, set[str]]:
    """The mapped files of each ML framework (only the frameworks with any)."""
    found = {name: {p for p in paths if re.search(pattern, p)} for name, pattern in ML_FRAMEWORKS.items()}
    return {name: hits for name, hits in found.items() if hits}


@dataclass
class ExampleFallback:
    """A fallback scorer serving one example project, and the rules the gateway's last resort uses for it."""

    server: procs.ServerProcess
    ruleset: rules.RuleSet
    rows: list[dict[str, Any]]


@pytest.fixture(scope="module")
def weather_fallback(trained, mlflow_url: str, session_dir: Path) -> Iterator[ExampleFallback]:
    """The weather example (no rules written): trained here, so that training distils its rules into
    the session's HEALMESH_HOME, then a fallback scorer with HEALMESH_PROJECT and that same home."""
    from healmesh.data.files import training_frame

    settings = get_settings()  # cached under the session's project before it is switched below
    path = EXAMPLES["weather"]
    weather = project.load(path)
    assert not weather.fallback.rules, "the weather example writes no rules: its scorer serves distilled ones"
    fingerprint = Schema.from_project(weather).fingerprint()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(project.ENV_VAR, str(path))
        frame = training_frame(project.active())
        report = train(frame, Settings(), TrainConfig(seed=0, mlp_epochs=2, register=False, save_to_bentoml=False))
    assert report.rules_origin == "distilled"
    assert rules.distilled_path(settings.home, fingerprint).is_file()
    ruleset = rules.for_project(weather, settings.home, fingerprint)
    # rows spread over the training period, features only, as a client posts them
    rows = [{name: float(row[name]) for name in weather.feature_names} for _, row in frame.iloc[::97].iterrows()]
    server = start_scorer("fallback", session_dir,
                          scorer_env(mlflow_url, HEALMESH_PROJECT=str(path), HEALMESH_HOME=str(settings.home)),
                          tag="-weather")
    try:
        yield ExampleFallback(server, ruleset, rows)
    finally:
        server.stop()


@pytest.fixture
def example_fallback(request, scorers) -> ExampleFallback:
    """The fallback scorer of ``request.param`` (an example name), with its rules and rows to score."""
    if request.param == "weather":
        return request.getfixturevalue("weather_fallback")
    fraud = project.load(EXAMPLES["fraud"])
    ruleset = rules.for_project(fraud, get_settings().home, Schema.from_project(fraud).fingerprint())
    rows = [{k: v for k, v in r.items() if k in fraud.feature_names} for r in transactions(200, seed=5)]
    return ExampleFallback(scorers["fallback"], ruleset, rows)


@pytest.mark.parametrize("example_fallback", list(EXAMPLES), indirect=True)
def test_fallback_process_loads_no_ml_framework(example_fallback, scorers):
    assert ml_libs(_maps(example_fallback.server.popen.pid)) == {}
    # controls: each pattern finds its framework where it is loaded
    assert "xgboost" in ml_libs(_maps(scorers["xgboost"].popen.pid)), "control: the XGBoost scorer maps libxgboost"
    assert "torch" in ml_libs(_maps(scorers["pytorch"].popen.pid)), "control: the PyTorch scorer maps libtorch"
    own = {m.path for m in psutil.Process(os.getpid()).memory_maps()}
    assert "sklearn" in ml_libs(own), "control: this process (it imported healmesh.training) maps scikit-learn"


@pytest.mark.parametrize("example_fallback", list(EXAMPLES), indirect=True)
def test_the_served_fallback_answers_the_rules_the_gateway_falls_back_to(example_fallback):
    """The fallback scorer scores with the very rules ``rules.for_project`` gives the gateway's last resort
    (for weather: the ones training distilled), row for row."""
    fb = example_fallback
    expected = fb.ruleset.score_records(fb.rows)
    assert len(set(expected.round(9))) > 1, "rows that all score the same would prove little"
    r = httpx.post(fb.server.url + "/predict", json={"rows": fb.rows}, timeout=30)
    assert r.status_code == 200, r.text[:500]
    answers = r.json()
    assert [a["probability"] for a in answers] == pytest.approx(list(expected), abs=1e-9)
    assert [a["label"] for a in answers] == [int(p >= fb.ruleset.threshold) for p in expected]
    assert {(a["model"], a["model_version"]) for a in answers} == {(rules.MODEL_NAME, fb.ruleset.version)}


def test_torch_scorer_uses_cuda_where_there_is_one(scorers):
    import torch

    state = httpx.get(scorers["pytorch"].url + "/admin/state", headers=AUTH).json()
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert state["slots"]["stable"]["device"].startswith(expected)


def test_registry_unreachable_serves_the_builtin_model(trained, session_dir):
    dead = local_url(procs.free_port())
    server = start_scorer("xgboost", session_dir, scorer_env(dead), tag="-no-registry")
    try:
        state = httpx.get(server.url + "/admin/state", headers=AUTH).json()
        assert state["slots"]["stable"]["source"] == "builtin"
        assert state["slots"]["stable"]["version"] == trained.models["xgboost"].version
        assert state["registry"]["reachable"] is False
        r = httpx.post(server.url + "/predict", json={"rows": transactions(3)})
        assert r.status_code == 200 and {x["model_version"] for x in r.json()} == {"1"}
        assert 'source="builtin"' in httpx.get(server.url + "/metrics").text
    finally:
        server.stop()


def test_versions_switch_without_restart_or_failed_requests(settings: Settings, trained, mlflow_url, session_dir):
    from healmesh import registry

    swap = Settings(xgb_registered_name="swap-xgboost", mlp_registered_name="swap-mlp")
    train(generate(20_000, seed=31), swap, TrainConfig(seed=31, mlp_epochs=1, save_to_bentoml=False))
    train(generate(20_000, seed=32), swap, TrainConfig(seed=32, mlp_epochs=1, save_to_bentoml=False))
    assert registry.version_by_alias(swap, "swap-xgboost", "champion").version == "1"
    server = start_scorer("xgboost", session_dir, scorer_env(mlflow_url, HEALMESH_XGB_REGISTERED_NAME="swap-xgboost"),
                          tag="-swap")
    try:
        bodies = [{"rows": [tx]} for tx in transactions(6_000, seed=4)]
        # by count, not by a timer: traffic before the promotion, then traffic until the scorer
        # follows it (its registry poll) and on after (a fast machine once ran out of requests first)
        replies = asyncio.run(hammer(server.url + "/predict", bodies[:500], concurrency=32))
        assert {r.body[0]["model_version"] for r in replies} == {"1"}
        registry.set_alias(swap, "swap-xgboost", "champion", "2")  # no reload call: the scorer follows
        deadline, sent = time.monotonic() + 60, 500
        while not any(r.body[0]["model_version"] == "2" for r in replies[500:] if r.status == 200):
            assert time.monotonic() < deadline and sent < len(bodies), "the scorer did not follow the alias"
            replies += asyncio.run(hammer(server.url + "/predict", bodies[sent:sent + 250], concurrency=32))
            sent += 250
        replies += asyncio.run(hammer(server.url + "/predict", bodies[sent:sent + 250], concurrency=32))
        assert {r.status for r in replies} == {200}
        versions = [r.body[0]["model_version"] for r in sorted(replies, key=lambda r: r.started)]
        assert versions[0] == "1" and versions[-1] == "2"
        # the scorer's own record of the swap: every request sent after it is served by v2 (a batch
        # reads its slot after all its requests arrived). Client-side order alone is no proof: a
        # request sent late from a busy client loop can still be answered before one sent earlier.
        swapped = httpx.get(server.url + "/admin/state", headers=AUTH).json()["slots"]["stable"]["since"]
        late = [r.body[0]["model_version"] for r in replies if r.sent_after > swapped]
        assert late and set(late) == {"2"}, "a request sent after the swap was served by the old version"
        print(f"\nswap: {versions.count('1')} answers from v1, {versions.count('2')} from v2 "
              f"({len(late)} sent after the swap), none failed")

        # the canary slot follows `challenger`; an empty slot answers 404
        registry.set_alias(swap, "swap-xgboost", "challenger", "1")
        state = httpx.post(server.url + "/admin/reload", headers=AUTH).json()
        assert state["slots"]["canary"]["version"] == "1" and state["slots"]["stable"]["version"] == "2"
        canary = httpx.post(server.url + "/predict_canary", json={"rows": transactions(2)})
        assert canary.status_code == 200 and {x["model_version"] for x in canary.json()} == {"1"}
        registry.delete_alias(swap, "swap-xgboost", "challenger")
        httpx.post(server.url + "/admin/reload", headers=AUTH)
        assert httpx.post(server.url + "/predict_canary", json={"rows": transactions(1)}).status_code == 404
        metrics = httpx.get(server.url + "/metrics").text
        assert 'healmesh_model_info{scorer="xgboost",slot="stable",model="xgboost",version="2"' in metrics
    finally:
        server.stop()
