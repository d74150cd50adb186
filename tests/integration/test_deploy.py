"""Shipping and watching: Prometheus rules and a real Prometheus, the Grafana dashboard's queries
against live metrics, container files, the compose file, Kubernetes manifests, the status page."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from healmesh.ops import procs

from .conftest import ROOT, TOKEN, metric_value, poll, publish_drift
from .load import run, transactions

pytestmark = pytest.mark.integration
DEPLOY = ROOT / "deploy"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is a test dependency (make test installs Debian's package)"
    return path


def sh(*cmd: str, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=300, **kw)


# --- Prometheus ---------------------------------------------------------------------------------

def test_promtool_checks_config_and_rules():
    promtool = tool("promtool")
    for cmd in ([promtool, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
                [promtool, "check", "config", "--syntax-only", str(DEPLOY / "prometheus" / "prometheus.compose.yml")],
                [promtool, "check", "rules", str(DEPLOY / "prometheus" / "rules.yml")]):
        done = sh(*cmd)
        assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_unit_tests_fire_and_hold_every_alert():
    done = sh(tool("promtool"), "test", "rules", str(DEPLOY / "prometheus" / "tests" / "alerts_test.yml"))
    assert done.returncode == 0, done.stdout + done.stderr
    alerts = {r["alert"] for g in yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())["groups"]
              for r in g["rules"] if "alert" in r}
    tested = set(re.findall(r"alertname: (\w+)", (DEPLOY / "prometheus" / "tests" / "alerts_test.yml").read_text()))
    assert alerts == tested, f"alerts without a promtool test: {alerts - tested}"
    assert len(alerts) >= 7


@pytest.fixture(scope="module")
def prometheus(gateway, scorers, session_dir):
    """A real Prometheus with the project's rules, scraping this session's mesh every second."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(DEPLOY / "prometheus" / "rules.yml")]
    config.pop("alerting")  # the file's Alertmanager is the fixed 9093: no test sends alerts there
    ports = {"healmesh-gateway": [gateway.port], "healmesh-scorers": [s.port for s in scorers.values()]}
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [f"127.0.0.1:{p}" for p in ports[job["job_name"]]]}]
    path = session_dir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    port = procs.free_port()
    server = procs.ServerProcess(
        name="prometheus", port=port, log_path=session_dir / "logs" / "prometheus.log", ready_path="/-/ready",
        cmd=[tool("prometheus"), f"--config.file={path}", f"--storage.tsdb.path={session_dir / 'prom-data'}",
             f"--web.listen-address=127.0.0.1:{port}"])
    yield server.launch(timeout=60)
    server.stop()


def test_a_real_prometheus_scrapes_the_gateway_and_evaluates_the_rules(prometheus, gateway):
    run(gateway.url + "/api/v1/predict", [{k: v for k, v in t.items() if k != "card_id"}
                                          for t in transactions(300, seed=21)], concurrency=8)
    api = prometheus.url + "/api/v1/query"

    def value(query: str) -> list:
        return httpx.get(api, params={"query": query}).json()["data"]["result"]

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        up = value('up{job="healmesh-gateway"}')
        rate = value("healmesh:requests:rate1m")
        if up and up[0]["value"][1] == "1" and rate:
            break
        time.sleep(1)
    assert up and up[0]["value"][1] == "1"
    series = value("healmesh_gateway_requests_total")
    assert {s["metric"]["variant"] for s in series} >= {"xgboost_stable", "pytorch"}
    assert rate, "the recording rule never produced a value"
    targets = httpx.get(prometheus.url + "/api/v1/targets").json()["data"]["activeTargets"]
    assert len(targets) == 4 and all(t["health"] == "up" for t in targets), targets
    rules = httpx.get(prometheus.url + "/api/v1/rules").json()["data"]["groups"]
    assert {g["name"] for g in rules} == {"healmesh.recording", "healmesh.alerts"}


# --- Grafana --------------------------------------------------------------------------------------

PROMQL_WORDS = {"sum", "max", "min", "avg", "count", "rate", "increase", "irate", "by", "without", "on", "ignoring",
                "histogram_quantile", "time", "le", "and", "or", "unless", "offset", "bool", "topk", "bottomk"}


def metric_names(expr: str) -> set[str]:
    without_labels = re.sub(r"\{[^}]*\}", "", expr)
    without_groupings = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", without_labels)
    without_ranges = re.sub(r"\[[^\]]*\]", "", without_groupings)
    tokens = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", without_ranges))
    return {t for t in tokens if t not in PROMQL_WORDS and not re.fullmatch(r"\d+", t)}


def test_every_dashboard_query_names_only_metrics_the_mesh_exports(gateway, scorers, redis_srv):
    run(gateway.url + "/api/v1/predict", transactions(50, seed=22), concurrency=4)
    publish_drift(redis_srv.port)  # drift series exist once the drift DAG has written a result
    poll(lambda: metric_value(httpx.get(gateway.url + "/metrics").text, "healmesh_drift_detected") == 1, 15,
         "the gateway to export the published drift")
    exported: set[str] = set()
    for url in [gateway.url, *(s.url for s in scorers.values())]:
        for line in httpx.get(url + "/metrics").text.splitlines():
            if line and not line.startswith("#"):
                exported.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0))
    recorded = {r["record"] for g in yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())["groups"]
                for r in g["rules"] if "record" in r}
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "healmesh.json").read_text())
    titles = []
    for panel in dashboard["panels"]:
        titles.append(panel["title"])
        for target in panel["targets"]:
            names = metric_names(target["expr"])
            assert names, target["expr"]
            unknown = names - exported - recorded
            assert not unknown, f"panel {panel['title']!r} queries {unknown}, which nothing exports"
    wanted = ["Traffic split", "latency", "Breaker", "Fallback", "Shadow", "Drift per feature", "Rollout",
              "Feature-log"]
    assert all(any(w.lower() in t.lower() for t in titles) for w in wanted), titles
    for f in (DEPLOY / "grafana" / "provisioning").rglob("*.yaml"):
        assert yaml.safe_load(f.read_text())["apiVersion"] == 1


# --- containers, compose, Kubernetes ----------------------------------------------------------------

@pytest.mark.parametrize("bentofile,models", [("bentofile.yaml", {"healmesh-xgboost", "healmesh-mlp"}),
                                              ("bentos/xgboost_scorer.bentofile.yaml", {"healmesh-xgboost"}),
                                              ("bentos/torch_scorer.bentofile.yaml", {"healmesh-mlp"}),
                                              ("bentos/fallback_scorer.bentofile.yaml", set())])
def test_each_bento_has_a_containerfile_and_carries_its_model(trained, tmp_path, bentofile, models):
    import bentoml

    from .test_bentos import build, export, service_models

    tag, _ = build(bentofile)
    bentoml.container.get_containerfile(tag, output_path=str(tmp_path / "Dockerfile"))
    dockerfile = (tmp_path / "Dockerfile").read_text()
    assert "FROM python:3.11" in dockerfile  # python: what the compose healthchecks call
    assert "bentoml" in dockerfile and "EXPOSE 3000" in dockerfile
    assert service_models(tag) == models
    shipped = export(tag, tmp_path)
    for name in models:
        assert list((shipped / "models" / name).rglob("meta.json")), f"{tag} does not carry {name}"


COMPOSE_SECRETS = {"HEALMESH_ADMIN_TOKEN": "compose-test-token", "HEALMESH_REDIS_PASSWORD": "compose-redis-pw-0123",
                   "HEALMESH_LABELLER_TOKEN": "compose-labeller-token"}


def compose_config(**env: str) -> subprocess.CompletedProcess[str]:
    return sh(tool("docker-compose"), "-f", str(DEPLOY / "docker-compose.yaml"), "config",
              env={**env, "PATH": "/usr/bin:/bin"})


def test_compose_file_parses_and_its_healthchecks_use_what_the_images_have(tmp_path):
    done = compose_config(**COMPOSE_SECRETS)
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    services = config["services"]
    assert {"redis", "mlflow", "gateway", "xgboost-scorer", "torch-scorer", "fallback-scorer", "airflow",
            "prometheus", "grafana"} <= set(services)
    # what each image ships: bento images are python:3.11-slim (the Dockerfile test above), MLflow's is
    # Python, Airflow's has curl, redis has redis-cli, Prometheus and Grafana have busybox wget
    has = {"redis": "redis-cli", "mlflow": "python", "prometheus": "wget", "grafana": "wget", "airflow": "curl"}
    for name, svc in services.items():
        assert "healthcheck" in svc, f"{name} has no healthcheck"
        binary = svc["healthcheck"]["test"][1].split()[0]  # CMD-SHELL: the command line's first word
        assert binary == has.get(name, "python"), f"{name}: healthcheck calls {binary}"
        if name not in has:
            assert svc["image"].startswith("healmesh"), name  # a bento image
    for name in COMPOSE_SECRETS:
        missing = compose_config(**{k: v for k, v in COMPOSE_SECRETS.items() if k != name})
        assert missing.returncode != 0 and name in missing.stderr


def run_redis_command(argv: list[str], password: str, tmp_path: Path) -> procs.ServerProcess:
    """A container's Redis command run here with the real redis-server: the image's entrypoint
    (which drops to the redis user) stands in as a plain exec; port and directory are this test's."""
    shim = tmp_path / "bin" / "docker-entrypoint.sh"
    shim.parent.mkdir()
    shim.write_text('#!/bin/sh\nexec "$@"\n')
    shim.chmod(0o700)
    port = procs.free_port()
    script = argv[-1].replace("redis-server -", f"redis-server - --port {port} --bind 127.0.0.1 --dir {tmp_path}", 1)
    assert script != argv[-1]
    server = procs.ServerProcess(name="container-redis", cmd=[*argv[:-1], script], port=port, ready_path="",
                                 log_path=tmp_path / "redis.log",
                                 env={"PATH": f"{shim.parent}:{os.environ['PATH']}", "REDISCLI_AUTH": password})
    return server.launch(timeout=20)


def assert_password_protected(server: procs.ServerProcess, password: str) -> None:
    import redis

    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=server.port).ping()
    client = redis.Redis(host="127.0.0.1", port=server.port, password=password, decode_responses=True)
    config = client.config_get("*")
    assert config["maxmemory-policy"] == "volatile-ttl" and config["appendonly"] == "yes"
    assert config["appendfsync"] == "everysec" and config["maxmemory"] == str(1024 ** 3)
    assert not any(password in arg for arg in psutil.Process(server.popen.pid).cmdline())  # `ps` shows argv


def test_compose_redis_requires_the_password_and_only_its_clients_get_it(tmp_path):
    done = compose_config(**COMPOSE_SECRETS)
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    password = COMPOSE_SECRETS["HEALMESH_REDIS_PASSWORD"]
    redis_svc = services["redis"]
    assert redis_svc["environment"]["REDISCLI_AUTH"] == password
    assert not any(password in arg for arg in redis_svc["command"])
    for name in ("gateway", "airflow"):
        env = services[name]["environment"]
        assert env["HEALMESH_REDIS_PASSWORD"] == password and env["HEALMESH_REDIS_URL"] == "redis://redis:6379/0"
    for name in ("xgboost-scorer", "torch-scorer", "fallback-scorer"):
        assert "HEALMESH_REDIS_PASSWORD" not in services[name]["environment"]  # they do not use Redis
    # only the gateway checks labels: nobody else holds the labeller token
    holders = [name for name, svc in services.items() if "HEALMESH_LABELLER_TOKEN" in (svc.get("environment") or {})]
    assert holders == ["gateway"]
    command = [arg.replace("$$", "$") for arg in redis_svc["command"]]  # compose's escape for a literal $
    server = run_redis_command(command, password, tmp_path)
    try:
        assert_password_protected(server, password)
    finally:
        server.stop()


def test_kubernetes_manifests_validate_against_the_schemas_offline():
    manifests = sorted((DEPLOY / "k8s").glob("[0-9]*.yaml"))
    done = sh(str(Path(sys.executable).parent / "kubernetes-validate"), "--strict", "-k", "1.33.0",
              *map(str, manifests))
    assert done.returncode == 0, done.stdout + done.stderr
    docs = [d for m in manifests for d in yaml.safe_load_all(m.read_text()) if d]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for scorer in ("xgboost-scorer", "torch-scorer", "fallback-scorer"):
        assert {("Deployment", scorer), ("HorizontalPodAutoscaler", scorer), ("Service", scorer)} <= kinds
    assert ("Deployment", "gateway") in kinds and ("Deployment", "redis") in kinds
    for d in docs:
        # the bentos (redis and mlflow are not bentos; the archiver serves nothing)
        if d["kind"] == "Deployment" and d["metadata"]["name"] not in {"redis", "mlflow", "archiver"}:
            pod = d["spec"]["template"]
            assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
            c = pod["spec"]["containers"][0]
            assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
    values = yaml.safe_load((DEPLOY / "k8s" / "airflow-values.yaml").read_text())
    assert values["defaultAirflowRepository"] == "healmesh-airflow" and values["airflowVersion"] == "3.3.2"
    assert {"envName": "HEALMESH_REDIS_PASSWORD", "secretName": "healmesh-redis", "secretKey": "password"} \
        in values["secret"]


def test_kubernetes_redis_requires_the_secret_password_and_the_gateway_gets_it(tmp_path):
    docs = [d for m in sorted((DEPLOY / "k8s").glob("[0-9]*.yaml")) for d in yaml.safe_load_all(m.read_text()) if d]
    pods = {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in docs if d["kind"] == "Deployment"}
    secret_ref = {"secretKeyRef": {"name": "healmesh-redis", "key": "password"}}
    redis_container = pods["redis"]["containers"][0]
    assert {"name": "REDISCLI_AUTH", "valueFrom": secret_ref} in redis_container["env"]
    gateway_env = pods["gateway"]["containers"][0]["env"]
    assert {"name": "HEALMESH_REDIS_PASSWORD", "valueFrom": secret_ref} in gateway_env
    labeller_ref = {"secretKeyRef": {"name": "healmesh-labeller", "key": "token"}}
    assert {"name": "HEALMESH_LABELLER_TOKEN", "valueFrom": labeller_ref} in gateway_env
    password = "k8s-redis-pw-0123"
    server = run_redis_command(redis_container["args"], password, tmp_path)
    try:
        assert_password_protected(server, password)
    finally:
        server.stop()


# --- the status page -------------------------------------------------------------------------------

def test_status_page_renders_in_chromium_and_matches_the_admin_api(gateway, artifacts_dir):
    chromium = tool("chromium")
    run(gateway.url + "/api/v1/predict", transactions(100, seed=23), concurrency=4)
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--virtual-time-budget=3000"]
    profile = artifacts_dir / ".chromium-ui"
    url = gateway.url + "/ui/"
    png = artifacts_dir / "status_page.png"
    png.unlink(missing_ok=True)  # a PNG an earlier run left must not pass for this one's
    started = time.time()
    shot = sh(chromium, *flags, f"--user-data-dir={profile}", "--window-size=1400,1300", f"--screenshot={png}", url)
    assert shot.returncode == 0, shot.stderr[-2000:]
    dumped = sh(chromium, *flags, f"--user-data-dir={profile}", "--dump-dom", url)
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    dom = dumped.stdout
    shutil.rmtree(profile, ignore_errors=True)
    assert png.is_file() and png.stat().st_mtime >= started - 1 and png.stat().st_size > 20_000
    state = httpx.get(gateway.url + "/api/v1/admin/state", headers=AUTH).json()
    for variant, weight in state["control"]["weights"].items():
        assert re.search(rf"data-weight=\"{variant}\">{weight:.0%}<", dom), variant
    for name, breaker in state["breakers"].items():
        assert f'data-breaker="{name}">{breaker["state"]}<' in dom, name
    rollout = state["control"]["rollout"]
    assert f'id="rollout-stage">{rollout["stage"]}%<' in dom and f'id="rollout-status">{rollout["status"]}<' in dom
    assert 'data-slot="xgboost-stable">v1 (mlflow)<' in dom
    assert "Lifecycle events" in dom and "Admin changes" in dom
    assert httpx.get(gateway.url + "/ui/reports/..%2F..%2Fetc%2Fpasswd").status_code == 404
    # a name the route matches and the guard refuses (tests/unit/test_gateway_status_page.py has the rest)
    refused = httpx.get(gateway.url + "/ui/reports/%2E%2E")
    assert refused.status_code == 404 and refused.json() == {"detail": "no such report"}
