"""The Kubernetes manifests (deploy/k8s/*.yaml) and Airflow's chart values, offline: schemas
(kubernetes-validate, Kubernetes 1.33), then what the cluster design needs of them: two gateways
and a disruption budget, credentials only from Secrets, a namespace that denies ingress but the
mesh's own paths (checked by evaluating the policies' selectors against the pods' labels),
Airflow on Celery and PostgreSQL, MLflow serving its artifacts from S3."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from healmesh.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
MANIFESTS = sorted(K8S.glob("[0-9]*.yaml"))
NAMESPACE = "healmesh"
SCORERS = ("xgboost-scorer", "torch-scorer", "fallback-scorer")
# names a credential goes by: such an env var must come from a Secret, never a plain value
SECRET_LIKE = re.compile(r"TOKEN|PASSWORD|SECRET|ACCESS_KEY|CREDENTIAL|_AUTH$|BACKEND_STORE_URI|ENDPOINT_URL")


def docs() -> list[dict[str, Any]]:
    return [d for m in MANIFESTS for d in yaml.safe_load_all(m.read_text()) if d]


def by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs() if d["kind"] == kind}


def values() -> dict[str, Any]:
    return yaml.safe_load((K8S / "airflow-values.yaml").read_text())


def containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    pod = deployment["spec"]["template"]["spec"]
    return [*pod.get("initContainers", []), *pod["containers"]]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


# --- schemas -------------------------------------------------------------------------------------

def test_manifests_validate_against_the_kubernetes_schemas_offline():
    assert MANIFESTS
    done = subprocess.run([str(Path(sys.executable).parent / "kubernetes-validate"), "--strict", "-k", "1.33.0",
                           *map(str, MANIFESTS)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    for d in docs():
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == NAMESPACE, d["metadata"]["name"]


# --- the gateway ---------------------------------------------------------------------------------

def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes LabelSelector evaluated on a set of labels ({} selects everything)."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, vals = e["key"], e["operator"], e.get("values", [])
        ok = {"In": key in labels and labels[key] in vals, "NotIn": labels.get(key) not in vals,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]
        if not ok:
            return False
    return True


def pod_labels(name: str) -> dict[str, str]:
    return by_kind("Deployment")[name]["spec"]["template"]["metadata"]["labels"]


def test_the_gateway_runs_at_least_two_replicas_under_a_disruption_budget():
    gateway = by_kind("Deployment")["gateway"]
    assert gateway["spec"]["replicas"] >= 2
    assert by_kind("HorizontalPodAutoscaler")["gateway"]["spec"]["minReplicas"] >= 2
    budgets = [p for p in by_kind("PodDisruptionBudget").values()
               if matches(p["spec"]["selector"], pod_labels("gateway"))]
    assert len(budgets) == 1, "no PodDisruptionBudget selects the gateway's pods"
    spec = budgets[0]["spec"]
    assert spec.get("minAvailable") == 1 or spec.get("maxUnavailable") == 1, spec
    # the budget selects the gateway alone
    for other in by_kind("Deployment"):
        if other != "gateway":
            assert not matches(spec["selector"], pod_labels(other)), other
    # probes on routes the gateway has (BentoML's /readyz and /livez; /healthz is /livez's alias)
    c = gateway["spec"]["template"]["spec"]["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] in {"/livez", "/healthz"}
    assert {c["readinessProbe"]["httpGet"]["port"], c["livenessProbe"]["httpGet"]["port"]} == {"http"}


# --- credentials -----------------------------------------------------------------------------------

def documented_secrets() -> set[tuple[str, str]]:
    """(secret, key) pairs the header of 00-namespace-config.yaml tells the operator to create."""
    text = (K8S / "00-namespace-config.yaml").read_text()
    pairs = set()
    for block in re.split(r"create secret generic ", text)[1:]:
        name = block.split()[0]
        command = block.split("kubectl")[0]
        pairs |= {(name, key) for key in re.findall(r"--from-literal=([\w-]+)=", command)}
    return pairs


def test_every_credential_comes_from_a_secret_the_operator_is_told_to_create():
    created = documented_secrets()
    refs = []
    for name, deployment in by_kind("Deployment").items():
        for c in containers(deployment):
            for env_name, e in env_of(c).items():
                if SECRET_LIKE.search(env_name):
                    assert "value" not in e and "secretKeyRef" in e.get("valueFrom", {}), \
                        f"{name}: {env_name} is not from a Secret"
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.append((ref["name"], ref["key"]))
            # no credential in argv either (a node's `ps` shows a container's arguments)
            argv = " ".join([*c.get("command", []), *c.get("args", [])])
            assert "--backend-store-uri" not in argv and not re.search(r"://[^/\s:@]+:[^/\s@]+@", argv), name
    for name, config in by_kind("ConfigMap").items():
        for key, value in config["data"].items():
            assert not SECRET_LIKE.search(key), f"ConfigMap {name} holds {key}"
            assert not re.search(r"://[^/\s:@]*:[^/\s@]+@", value), f"ConfigMap {name}: {key} holds a password"
    v = values()
    for e in v.get("env", []):
        assert not SECRET_LIKE.search(e["name"]), f"airflow-values.yaml: {e['name']} is a plain value"
    refs += [(s["secretName"], s["secretKey"]) for s in v["secret"]]
    refs += [(v["data"][k], "connection") for k in ("metadataSecretName", "brokerUrlSecretName") if k in v["data"]]
    chart_keys = (("fernetKeySecretName", "fernet-key"), ("apiSecretKeySecretName", "api-secret-key"),
                  ("jwtSecretName", "jwt-secret"))
    refs += [(v[k], key) for k, key in chart_keys if k in v]
    if v.get("redis", {}).get("passwordSecretName"):
        refs.append((v["redis"]["passwordSecretName"], "password"))
    assert refs and set(refs) <= created, f"referenced but never created: {set(refs) - created}"
    # who holds what (docs/architecture.md, threat model)
    pods = by_kind("Deployment")
    gateway_env = env_of(pods["gateway"]["spec"]["template"]["spec"]["containers"][0])
    for env_name, secret in (("HEALMESH_ADMIN_TOKEN", "healmesh-admin"),
                             ("HEALMESH_LABELLER_TOKEN", "healmesh-labeller"),
                             ("HEALMESH_REDIS_PASSWORD", "healmesh-redis")):
        assert gateway_env[env_name]["valueFrom"]["secretKeyRef"]["name"] == secret
    holders = {n for n, d in pods.items() for c in containers(d) if "HEALMESH_LABELLER_TOKEN" in env_of(c)}
    assert holders == {"gateway"}
    for scorer in SCORERS:
        assert "HEALMESH_REDIS_PASSWORD" not in env_of(pods[scorer]["spec"]["template"]["spec"]["containers"][0])
    assert {s["envName"] for s in v["secret"]} >= {"HEALMESH_ADMIN_TOKEN", "HEALMESH_REDIS_PASSWORD"}


def test_every_healmesh_env_name_is_a_setting():
    """A misspelt or renamed HEALMESH_* variable would be ignored silently (extra="ignore")."""
    names = {k for c in by_kind("ConfigMap").values() for k in c["data"]}
    names |= {e for d in by_kind("Deployment").values() for c in containers(d) for e in env_of(c)}
    v = values()
    names |= {e["name"] for e in v["env"]} | {s["envName"] for s in v["secret"]}
    fields = Settings.model_fields
    for name in sorted(n for n in names if n.startswith("HEALMESH_")):
        path = name.removeprefix("HEALMESH_").lower().split("__")
        assert path[0] in fields, f"{name}: no setting {path[0]}"
        if len(path) == 2:
            group = fields[path[0]].annotation
            assert path[1] in group.model_fields, f"{name}: {group.__name__} has no {path[1]}"


# --- network policies ----------------------------------------------------------------------------

RELEASE = "airflow"
INGRESS_NAMESPACE = {"kubernetes.io/metadata.name": "ingress-nginx"}


def airflow_pod(component: str) -> dict[str, str]:
    """The labels Airflow's chart puts on a component's pods (tier, component, release)."""
    return {"tier": "airflow", "component": component, "release": RELEASE}


def sources() -> dict[str, tuple[dict[str, str], dict[str, str]]]:
    """Everyone who might call: name -> (namespace labels, pod labels)."""
    here = {"kubernetes.io/metadata.name": NAMESPACE}
    found = {name: (here, pod_labels(name)) for name in by_kind("Deployment")}
    for component in ("worker", "scheduler", "api-server", "dag-processor", "triggerer", "redis", "statsd"):
        found[f"airflow-{component}"] = (here, airflow_pod(component))
    found["ingress-controller"] = (INGRESS_NAMESPACE, {"app.kubernetes.io/name": "ingress-nginx"})
    found["elsewhere"] = ({"kubernetes.io/metadata.name": "default"}, {"app.kubernetes.io/name": "gateway"})
    return found


def peer_matches(peer: dict[str, Any], ns_labels: dict[str, str], labels: dict[str, str]) -> bool:
    if "ipBlock" in peer:
        return False
    if "namespaceSelector" in peer:
        ns_ok = matches(peer["namespaceSelector"], ns_labels)
    else:
        ns_ok = ns_labels.get("kubernetes.io/metadata.name") == NAMESPACE
    return ns_ok and matches(peer.get("podSelector", {}), labels)


def port_allowed(rule_ports: list[dict[str, Any]] | None, port: int, named: dict[str, int]) -> bool:
    if not rule_ports:
        return True
    return any(p.get("port") in (None, port) or named.get(p.get("port")) == port for p in rule_ports)


def allowed(target: str, port: int) -> set[str]:
    """Who may open `port` on `target`'s pods: the union over the policies that select them."""
    deployment = by_kind("Deployment")[target]
    named = {p["name"]: p["containerPort"] for c in containers(deployment) for p in c.get("ports", [])}
    selecting = [p["spec"] for p in by_kind("NetworkPolicy").values()
                 if "Ingress" in p["spec"]["policyTypes"] and matches(p["spec"]["podSelector"], pod_labels(target))]
    if not selecting:  # a pod no policy selects is open to everyone
        return set(sources())
    who = set()
    for spec in selecting:
        for rule in spec.get("ingress", []):
            if not port_allowed(rule.get("ports"), port, named):
                continue
            for name, (ns_labels, labels) in sources().items():
                if "from" not in rule or any(peer_matches(p, ns_labels, labels) for p in rule["from"]):
                    who.add(name)
    return who


def service_port(name: str) -> int:
    deployment = by_kind("Deployment")[name]
    target = by_kind("Service")[name]["spec"]["ports"][0]["targetPort"]
    named = {p["name"]: p["containerPort"] for c in containers(deployment) for p in c.get("ports", [])}
    return named.get(target, target)


def test_the_namespace_denies_ingress_by_default():
    deny = [p for p in by_kind("NetworkPolicy").values()
            if p["spec"]["podSelector"] == {} and "Ingress" in p["spec"]["policyTypes"]
            and not p["spec"].get("ingress")]
    assert deny, "no default-deny ingress policy"
    # and no policy opens a pod to everyone
    for name, policy in by_kind("NetworkPolicy").items():
        for rule in policy["spec"].get("ingress", []):
            assert rule.get("from"), f"{name} admits every source"
            assert all("ipBlock" not in peer for peer in rule["from"]), name


LIFECYCLE = {"airflow-worker", "airflow-scheduler"}


@pytest.mark.parametrize("target,callers", [
    # the scorers' /predict and their admin routes share the port: the gateway and the lifecycle only
    *[(scorer, {"gateway"} | LIFECYCLE) for scorer in SCORERS],
    # the gateway: the ingress controller's namespace (the public API) and the lifecycle (its admin API)
    ("gateway", {"ingress-controller"} | LIFECYCLE),
    # Redis: its clients (the scorers never use it)
    ("redis", {"gateway", "archiver"} | LIFECYCLE),
    # MLflow: models for the scorers, drift reports for the gateway, runs and registry for the lifecycle
    ("mlflow", {"gateway", *SCORERS} | LIFECYCLE),
])
def test_each_service_port_admits_exactly_its_callers(target, callers):
    assert allowed(target, service_port(target)) == callers


def test_the_policies_select_the_pods_and_the_chart_release_they_name():
    deployments = by_kind("Deployment")
    for name, policy in by_kind("NetworkPolicy").items():
        assert any(matches(policy["spec"]["podSelector"], pod_labels(d)) for d in deployments), \
            f"{name} selects no pod of the manifests"
    # the lifecycle is recognised by the chart's release label: the release the README's install uses
    header = (K8S / "airflow-values.yaml").read_text()
    installed = re.findall(r"helm install (\S+) apache-airflow/airflow -n (\S+)", header)
    assert installed == [(RELEASE, NAMESPACE)]


# --- Airflow's chart values --------------------------------------------------------------------------

def test_airflow_runs_on_celery_workers_with_postgresql_metadata():
    v = values()
    assert v["executor"] in {"CeleryExecutor", "KubernetesExecutor"}
    if v["executor"] == "CeleryExecutor":
        assert v["workers"]["replicas"] >= 2
        assert v["redis"]["enabled"] or v["data"].get("brokerUrlSecretName")
        if v["redis"].get("enabled"):  # else the chart mints a new broker password on every upgrade
            assert v["redis"].get("passwordSecretName") and v["data"].get("brokerUrlSecretName")
    # PostgreSQL: the chart's own, or a connection from a Secret (never the chart's default one)
    assert v["postgresql"]["enabled"] or v["data"].get("metadataSecretName")
    assert "metadataConnection" not in v.get("data", {})
    assert v["networkPolicies"]["enabled"], "the namespace denies ingress: the chart must open its own paths"
    env = {e["name"]: e["value"] for e in v["env"]}
    assert "HEALMESH_DRIFT_REPORTS_DIR" not in env, "drift reports live in MLflow's artifact store"
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert urlsplit(env["HEALMESH_ARCHIVE__URL"]).scheme == "s3"
    from_secret = {s["envName"] for s in v["secret"]}
    assert {"HEALMESH_ARCHIVE__ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= from_secret


def test_an_archiver_copies_the_feature_log_to_the_same_bucket_as_the_lifecycle():
    archiver = by_kind("Deployment")["archiver"]
    assert archiver["spec"]["replicas"] == 1 and archiver["spec"]["strategy"]["type"] == "Recreate"
    c = archiver["spec"]["template"]["spec"]["containers"][0]
    assert c["command"][-2:] == ["archive", "run"]
    env = env_of(c)
    lifecycle = {e["name"]: e["value"] for e in values()["env"]}
    assert env["HEALMESH_ARCHIVE__URL"]["value"] == lifecycle["HEALMESH_ARCHIVE__URL"]
    for name in ("HEALMESH_ARCHIVE__ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                 "HEALMESH_REDIS_PASSWORD"):
        assert "secretKeyRef" in env[name]["valueFrom"], name


# --- MLflow ------------------------------------------------------------------------------------------

def test_mlflow_serves_its_artifacts_from_s3_and_keeps_its_store_in_postgresql():
    mlflow = by_kind("Deployment")["mlflow"]
    c = mlflow["spec"]["template"]["spec"]["containers"][0]
    argv = [*c.get("command", []), *c.get("args", [])]
    assert "--serve-artifacts" in argv
    assert urlsplit(argv[argv.index("--artifacts-destination") + 1]).scheme == "s3"
    env = env_of(c)
    for name in ("MLFLOW_BACKEND_STORE_URI", "MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert "secretKeyRef" in env[name]["valueFrom"], name
    assert "postgresql+psycopg://" in (K8S / "00-namespace-config.yaml").read_text()
    assert "volumes" not in mlflow["spec"]["template"]["spec"], "MLflow keeps nothing on its pod"
    # MLflow admits only the Host headers it is told to: the name its clients use must be one
    hosts = argv[argv.index("--allowed-hosts") + 1].split(",")
    uris = [by_kind("ConfigMap")["healmesh-config"]["data"]["MLFLOW_TRACKING_URI"],
            *(e["value"] for e in values()["env"] if e["name"] == "MLFLOW_TRACKING_URI")]
    assert all(urlsplit(u).netloc in hosts for u in uris), (uris, hosts)
    # the image has a PostgreSQL driver and an S3 client, at the project's pins
    assert c["image"] == "healmesh-mlflow:latest"
    dockerfile = (ROOT / "deploy" / "mlflow" / "Dockerfile").read_text()
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for package in ("psycopg[binary]", "boto3"):
        pin = next(p for p in pins if p.startswith(package + "=="))
        assert f'"{pin}"' in dockerfile, pin
