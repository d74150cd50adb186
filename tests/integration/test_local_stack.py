"""The local stack as `healmesh up` starts it (the same stack functions, real processes, a private
HEALMESH_HOME, free ports; no models, no Airflow): its own Redis behind a password, never a
Redis it did not start, private secrets and logs, children that reach Redis through the
password file, and `healmesh status` from a shell that has none of up's environment."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest
import redis

from healmesh import credentials, redis_conn
from healmesh.ops import procs, stack
from healmesh.ops.supervisor import client
from healmesh.ops.supervisor.spec import Spec
from healmesh.settings import Settings
from healmesh.urls import local_redis_url, local_url

from .conftest import ROOT, scorer_urls
from .load import transactions

pytestmark = pytest.mark.integration
LEGACY_TOKEN = "legacy-admin-token-0123"
LOCAL = "127.0.0.1"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@dataclass
class Mesh:
    settings: Settings
    env: dict[str, str]  # what `healmesh` commands see in a user's shell: no Redis URL, no password
    child_env: dict[str, str]  # what up gives the processes it starts


@pytest.fixture(scope="module")
def foreign(tmp_path_factory) -> Iterator[procs.ServerProcess]:
    """A Redis without a password on the port `up` tries first, as a machine's own Redis on 6379
    would be (this one is on a free port: the machine's own is never touched)."""
    where = tmp_path_factory.mktemp("foreign")
    server = procs.redis_server(procs.free_port(), where / "state", where / "logs").launch(timeout=20)
    redis.Redis(host=LOCAL, port=server.port).set("theirs", "untouched")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mesh(foreign, scorers, tmp_path_factory) -> Iterator[Mesh]:
    home = tmp_path_factory.mktemp("stack") / "home"
    (home / "logs").mkdir(parents=True)
    home.chmod(0o755)
    (home / "logs").chmod(0o755)
    (home / "admin_token").write_text(LEGACY_TOKEN)  # an older install's token, world-readable
    (home / "admin_token").chmod(0o644)
    (home / "logs" / "airflow.log").write_text("an older install's log\n")
    (home / "logs" / "airflow.log").chmod(0o644)
    env = {"HEALMESH_HOME": str(home), "HEALMESH_REDIS_PORT": str(foreign.port),
           **{f"HEALMESH_{name}_PORT": str(procs.free_port())
              for name in ("GATEWAY", "XGB", "TORCH", "FALLBACK", "AIRFLOW", "MLFLOW")}}
    settings = Settings(**{k.removeprefix("HEALMESH_").lower(): v for k, v in env.items()},
                        admin_token=None, labeller_token=None)
    try:
        # what `healmesh up` does, without models: private dirs, Redis, the children's env, the
        # supervisor; the gateway routes to the session's scorers (ready once its variants answer)
        stack.secure_home(settings)
        redis_program = stack.redis_program(settings)
        assert redis_program is not None
        child_env = stack.scorer_env(settings, tracking=local_url(procs.free_port()))
        gateway = stack.gateway_program(settings, child_env)
        gateway = replace(gateway, env={**gateway.env, **scorer_urls(scorers)})
        spec = Spec(run_dir=str(stack.run_dir(settings)), log_dir=str(home / "logs"), programs=(redis_program, gateway))
        supervisor = client.start_daemon(spec, cwd=ROOT)
        for group in ((redis_program,), (gateway,)):
            assert stack._start_group(settings, supervisor, group) == 0
        yield Mesh(settings=settings, env=env, child_env=child_env)
    finally:
        stack.down(settings)


def _ours(mesh: Mesh) -> redis.Redis:
    return redis_conn.sync_client(mesh.settings)


def _our_port(mesh: Mesh) -> int:
    return int(redis_conn.url(mesh.settings).rsplit(":", 1)[1].split("/")[0])


def _secrets(mesh: Mesh) -> dict[str, str]:
    s = mesh.settings
    return {"redis password": redis_conn.password(s) or "", "admin token": credentials.admin_token(s),
            "labeller token": credentials.labeller_token(s)}


def test_our_redis_refuses_a_client_without_the_password_and_serves_redis_conns(mesh):
    port = _our_port(mesh)
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host=LOCAL, port=port).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host=LOCAL, port=port, password="not-the-password").ping()
    client = _ours(mesh)
    assert client.ping()
    config = client.config_get("*")
    assert config["maxmemory"] == str(1024 ** 3) and config["maxmemory-policy"] == "volatile-ttl"
    assert config["appendonly"] == "yes" and config["appendfsync"] == "everysec"
    assert config["bind"] == "127.0.0.1"


def test_a_redis_we_did_not_start_is_neither_shared_nor_touched(mesh, foreign):
    assert _our_port(mesh) != foreign.port
    theirs = redis.Redis(host=LOCAL, port=foreign.port)
    assert theirs.get("theirs") == b"untouched" and theirs.dbsize() == 1
    assert foreign.popen is not None and foreign.popen.poll() is None


def test_the_gateway_up_starts_logs_into_our_redis_through_the_password_file(mesh):
    env = mesh.child_env
    assert env["HEALMESH_REDIS_URL"] == redis_conn.url(mesh.settings)
    assert env["HEALMESH_REDIS_PASSWORD_FILE"] == str(credentials.secret_path(mesh.settings, "redis_password"))
    assert "HEALMESH_REDIS_PASSWORD" not in env and redis_conn.password(mesh.settings) not in env.values()
    before = _ours(mesh).xlen("healmesh:features")
    answer = httpx.post(f"http://{LOCAL}:{mesh.settings.gateway_port}/api/v1/predict", json=transactions(1)[0],
                        timeout=30)
    assert answer.status_code == 200, answer.text
    request_id = answer.json()["request_id"]
    deadline = time.monotonic() + 30
    while _ours(mesh).xlen("healmesh:features") == before and time.monotonic() < deadline:
        time.sleep(0.2)
    last = _ours(mesh).xrevrange("healmesh:features", count=1)
    assert last and last[0][1][b"request_id"].decode() == request_id


def test_secret_files_logs_and_their_directories_are_private(mesh):
    home = mesh.settings.home
    for directory in (home, home / "secrets", home / "logs", home / "run"):
        assert _mode(directory) == 0o700, directory
    files = [*(home / "secrets").iterdir(), home / "redis" / "redis.conf", *(home / "logs").glob("*.log")]
    assert {f.name for f in files} >= {"redis_password", "admin_token", "labeller_token", "redis.conf",
                                       "gateway.log", "airflow.log"}
    for path in files:
        assert _mode(path) == 0o600, path
    # the older install's admin token was moved, not left behind or replaced
    assert not (home / "admin_token").exists()
    assert credentials.secret_path(mesh.settings, "admin_token").read_text() == LEGACY_TOKEN
    # what the servers wrote themselves (umask 077): Redis's append-only files
    for path in (home / "redis").rglob("*"):
        assert _mode(path) & 0o077 == 0, path


def test_no_log_holds_a_secret(mesh):
    secrets = _secrets(mesh)
    assert all(len(value) >= 16 for value in secrets.values())
    logs = list((mesh.settings.home / "logs").glob("*.log"))
    assert len(logs) >= 3  # gateway, redis, the older airflow.log
    for log in logs:
        text = log.read_text(errors="replace")
        for name, value in secrets.items():
            assert value not in text, f"{log.name} holds the {name}"


def test_status_from_a_plain_shell_names_our_redis_without_a_secret(mesh):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HEALMESH_", "MLFLOW_"))}
    done = subprocess.run([sys.executable, "-m", "healmesh.ops.cli", "status"], capture_output=True, text=True,
                          cwd=ROOT, env={**env, **mesh.env}, timeout=120)
    out = done.stdout + done.stderr
    url = local_redis_url(_our_port(mesh))
    line = next(line for line in out.splitlines() if line.startswith("redis") and "redis://" in line)
    assert url in line and "ours" in line and line.endswith("up"), out
    assert str(credentials.secret_path(mesh.settings, "redis_password")) in line
    for name, value in _secrets(mesh).items():
        assert value not in out, f"status printed the {name}"


def test_a_second_up_reuses_our_redis(mesh, capsys):
    _ours(mesh).set("written-before", "1")
    supervisor = stack.supervisor(mesh.settings)
    pid = supervisor.pids("redis")
    again = Settings(**{k.removeprefix("HEALMESH_").lower(): v for k, v in mesh.env.items()})
    stack.secure_home(again)
    assert stack.redis_program(again) is None  # nothing to start
    assert f"already running on {redis_conn.url(mesh.settings)}" in capsys.readouterr().out
    assert redis_conn.url(again) == redis_conn.url(mesh.settings) and supervisor.pids("redis") == pid
    assert redis_conn.sync_client(again).get("written-before") == b"1"


def test_a_password_with_quotes_and_spaces_reaches_redis_intact(tmp_path):
    password = 'a "quoted" pass\\word with spaces'
    server = procs.redis_server(procs.free_port(), tmp_path / "state", tmp_path / "logs", password=password)
    server.launch(timeout=20)
    try:
        assert redis.Redis(host=LOCAL, port=server.port, password=password).ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host=LOCAL, port=server.port).ping()
    finally:
        server.stop()


AIRFLOW_PRINTS_PASSWORDS = """
from airflow.cli.commands.standalone_command import StandaloneCommand
from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager
StandaloneCommand().find_user_info()  # `airflow standalone`'s banner: generates and prints a new password
SimpleAuthManager().init()  # the api-server's start: prints any password it has to generate
"""


def test_airflow_as_up_starts_it_never_prints_its_admin_password(tmp_path):
    """Airflow's own code for the two places `airflow standalone` prints a new password into
    airflow.log, run as up runs standalone (its environment, umask and log), without starting
    the whole of Airflow."""
    airflow_home = tmp_path / "airflow"
    server = procs.airflow_standalone(procs.free_port(), airflow_home, ROOT / "dags", tmp_path / "logs")
    server.cmd = [sys.executable, "-c", AIRFLOW_PRINTS_PASSWORDS]
    server.start()
    assert server.popen is not None and server.popen.wait(timeout=240) == 0, server.log_tail()
    log = server.log_path.read_text()
    password = procs.airflow_password(airflow_home)
    assert password and password not in log, log
    assert "Not echoing it here" in log  # standalone saw the password file and printed nothing
    assert _mode(procs.airflow_passwords_file(airflow_home)) == 0o600 and _mode(server.log_path) == 0o600


def test_up_stops_at_an_unprotected_redis_an_older_up_left_running(tmp_path):
    home = tmp_path / "home"
    old = procs.redis_server(procs.free_port(), home / "redis", home / "logs").launch(timeout=20)
    try:
        (home / "run").mkdir()
        (home / "run" / "redis.pid").write_text(str(old.popen.pid if old.popen else ""))  # as the older up did
        settings = Settings(home=home, redis_port=old.port)
        with pytest.raises(procs.ServerFailed, match="older `healmesh up`.*healmesh down"):
            stack.redis_program(settings)
        assert old.popen is not None and old.popen.poll() is None  # told about, not stopped
        assert redis.Redis(host=LOCAL, port=old.port).ping()
    finally:
        old.stop()
