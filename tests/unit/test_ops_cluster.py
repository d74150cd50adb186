"""The cluster rehearsal's plan, without starting it: the load balancer's config (checked by
HAProxy itself), node homes, the profile file, the database names and URIs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from healmesh.ops import cluster, postgres
from healmesh.ops.cluster import Profile
from healmesh.settings import Settings


def test_haproxy_accepts_the_config_and_health_checks_every_gateway(tmp_path):
    text = cluster.haproxy_config(18000, {"gateway-1": 18010, "gateway-2": 18011})
    path = tmp_path / "haproxy.cfg"
    path.write_text(text)
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    assert Path(binary).exists(), "haproxy is a system dependency (make system-deps)"
    done = subprocess.run([binary, "-c", "-f", str(path)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "bind 127.0.0.1:18000" in text and "option httpchk GET /readyz" in text
    assert "server gateway-1 127.0.0.1:18010 check" in text and "server gateway-2 127.0.0.1:18011 check" in text
    # what a killed gateway dropped goes to the other one
    assert "retry-on conn-failure empty-response" in text and "option redispatch" in text
    assert "option http-buffer-request" in text  # a POST's body held, so it can be sent again


def test_each_node_home_is_private_and_the_profile_is_remembered(tmp_path):
    s = Settings(home=tmp_path / "home")
    a, b = cluster.node_home(s, "gateway-1"), cluster.node_home(s, "gateway-2")
    assert a != b and a.parent == b.parent == s.home / cluster.NODES
    assert a.stat().st_mode & 0o777 == 0o700 and (a / "logs").is_dir()
    secret = cluster.node_secret(a, "redis_password", "pw-123456")
    assert secret.read_text() == "pw-123456" and secret.stat().st_mode & 0o777 == 0o600
    run = tmp_path / "run"
    run.mkdir()
    assert cluster.read_profile(run) is Profile.LOCAL
    (run / cluster.PROFILE_FILE).write_text("cluster")
    assert cluster.read_profile(run) is Profile.CLUSTER
    (run / cluster.PROFILE_FILE).write_text("bogus")
    assert cluster.read_profile(run) is Profile.LOCAL


def test_database_names_differ_by_home_and_uris_quote_the_password(tmp_path):
    one, two = Settings(home=tmp_path / "a"), Settings(home=tmp_path / "b")
    assert postgres.database_name(one, "mlflow") != postgres.database_name(two, "mlflow")
    assert postgres.database_name(one, "mlflow") != postgres.database_name(one, "airflow")
    db = postgres.Database(name="healmesh_x_mlflow", password="a/b@c:d", host="127.0.0.1", port=5432)
    assert db.uri() == "postgresql+psycopg://healmesh_x_mlflow:a%2Fb%40c%3Ad@127.0.0.1:5432/healmesh_x_mlflow"


def test_the_cluster_settings_refuse_a_single_gateway():
    with pytest.raises(ValueError, match="gateway_ports"):
        Settings(cluster={"gateway_ports": (8010,)})
