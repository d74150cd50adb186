"""Secret files (created 0600, in 0700 directories, moved from older installs), where the Redis
clients connect and with what, and that nothing meant for a log or a child's env holds a secret."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from pydantic import ValidationError

from healmesh import credentials, redis_conn
from healmesh.ops import local_redis, procs
from healmesh.settings import Settings


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_public_url_takes_the_password_out():
    def public(url: str) -> str:
        return redis_conn.public_url(Settings(redis_url=url))

    assert public("redis://:s3cret@127.0.0.1:6390/2") == "redis://:***@127.0.0.1:6390/2"
    assert public("redis://app:s3cret@redis.internal/0") == "redis://app:***@redis.internal/0"
    assert public("redis://127.0.0.1:6390/0") == "redis://127.0.0.1:6390/0"


def test_the_cli_finds_the_redis_up_recorded_and_an_explicit_url_wins(tmp_path):
    home = tmp_path / "home"
    password_file = home / "secrets" / "redis_password"
    credentials.write_secret(password_file, "pw-from-file")
    implicit = Settings(home=home, redis_port=6391)
    assert redis_conn.url(implicit) == "redis://127.0.0.1:6391/0" and redis_conn.password(implicit) is None

    redis_conn.remember(implicit, redis_conn.Managed("redis://127.0.0.1:6392/0", password_file))
    assert "pw-from-file" not in redis_conn.state_path(implicit).read_text()
    assert redis_conn.url(implicit) == "redis://127.0.0.1:6392/0"
    assert redis_conn.password(implicit) == "pw-from-file"
    # a child gets the path, never the password itself
    assert redis_conn.client_env(implicit) == {"HEALMESH_REDIS_URL": "redis://127.0.0.1:6392/0",
                                               "HEALMESH_REDIS_PASSWORD_FILE": str(password_file)}

    explicit = Settings(home=home, redis_url="redis://10.0.0.5:6379/0")
    assert redis_conn.url(explicit) == "redis://10.0.0.5:6379/0" and redis_conn.password(explicit) is None
    assert redis_conn.client_env(explicit) == {"HEALMESH_REDIS_URL": "redis://10.0.0.5:6379/0"}


def test_secrets_are_created_0600_in_a_0700_directory_even_one_an_older_install_left_open(tmp_path):
    home = tmp_path / "home"
    (home / "secrets").mkdir(parents=True, mode=0o755)
    (home / "secrets").chmod(0o755)
    settings = Settings(home=home, admin_token=None, labeller_token=None)
    token = credentials.labeller_token(settings)
    path = credentials.secret_path(settings, credentials.LABELLER_TOKEN)
    assert path.read_text() == token and _mode(path) == 0o600 and _mode(path.parent) == 0o700
    redis_file = credentials.redis_password_file(settings)
    assert _mode(redis_file) == 0o600 and len(redis_file.read_text()) >= 32
    assert credentials.redis_password_file(settings) == redis_file  # made once


def test_an_admin_token_from_an_older_install_moves_into_secrets(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    legacy = home / "admin_token"
    legacy.write_text("legacy-token-0123456\n")
    legacy.chmod(0o644)
    settings = Settings(home=home, admin_token=None)
    assert credentials.admin_token(settings) == "legacy-token-0123456"
    moved = credentials.secret_path(settings, credentials.ADMIN_TOKEN)
    assert not legacy.exists() and _mode(moved) == 0o600
    assert credentials.admin_token(settings) == "legacy-token-0123456"


def test_a_password_file_that_is_not_there_is_a_clear_error(tmp_path):
    settings = Settings(home=tmp_path, redis_password_file=tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="HEALMESH_REDIS_PASSWORD_FILE=.*nope does not exist"):
        credentials.redis_password_file(settings)


def test_a_password_value_without_a_redis_url_is_refused_by_up(tmp_path):
    with pytest.raises(ValueError, match="HEALMESH_REDIS_PASSWORD is for a Redis of your own"):
        local_redis.ensure(Settings(home=tmp_path, redis_password="some-password"))


def test_redis_maxmemory_is_validated():
    assert Settings().redis_maxmemory == "1gb"
    assert Settings(redis_maxmemory="512MB").redis_maxmemory == "512MB"
    with pytest.raises(ValidationError, match="redis_maxmemory"):
        Settings(redis_maxmemory="a lot")


def test_airflow_password_file_is_made_0600_before_airflow_starts_and_an_open_one_is_replaced(tmp_path):
    airflow_home = tmp_path / "airflow"
    server = procs.airflow_standalone(8080, airflow_home, tmp_path / "dags", tmp_path / "logs")
    path = procs.airflow_passwords_file(airflow_home)
    assert server.env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] == str(path)
    assert _mode(path) == 0o600
    password = procs.airflow_password(airflow_home)
    assert password and password not in json.dumps(server.env)
    procs.ensure_airflow_passwords(airflow_home)
    assert procs.airflow_password(airflow_home) == password  # kept while private

    path.chmod(0o644)  # as an older install left it (and printed it into airflow.log)
    procs.ensure_airflow_passwords(airflow_home)
    assert _mode(path) == 0o600 and procs.airflow_password(airflow_home) not in (None, password)
