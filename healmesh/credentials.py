"""Secrets: the admin token, the labeller token, the alerts token and the Redis password.

Each is taken from its setting (``HEALMESH_ADMIN_TOKEN``, ``HEALMESH_LABELLER_TOKEN``,
``HEALMESH_ALERTS_TOKEN``, ``HEALMESH_REDIS_PASSWORD``) or else from a file under ``$HEALMESH_HOME/secrets/``, generated
once. A secret file is created 0600 from the start (``O_CREAT | O_EXCL`` with the mode), never
written and then chmodded: there is no moment at which another user could open it. Nothing
here logs a secret's value; callers print paths, not contents.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import secrets
import stat
from pathlib import Path

from healmesh.settings import Settings

ADMIN_TOKEN = "admin_token"
LABELLER_TOKEN = "labeller_token"
ALERTS_TOKEN = "alerts_token"
REDIS_PASSWORD = "redis_password"


def secrets_dir(settings: Settings) -> Path:
    return settings.home / "secrets"


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) with mode 0700 for the last part; an existing one (from an
    older install) is made 0700 too."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if stat.S_IMODE(path.stat().st_mode) != 0o700:
        path.chmod(0o700)
    return path


def write_secret(path: Path, value: str) -> None:
    """Create ``path`` holding ``value``, readable by its owner only. Fails if it exists."""
    private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value)


def read_or_create(path: Path, nbytes: int = 24) -> str:
    """The secret stored at ``path``, generated (URL-safe, ``nbytes`` random bytes) if absent."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    with contextlib.suppress(FileExistsError):  # another process created it first: use theirs
        write_secret(path, secrets.token_urlsafe(nbytes))
    return path.read_text().strip()


def secret_path(settings: Settings, name: str) -> Path:
    return secrets_dir(settings) / name


def adopt_legacy(old: Path, new: Path) -> None:
    """Move a secret an older install kept at ``old`` (world-readable) to ``new`` (0600), so its
    users keep working; the old file goes. A ``new`` that exists already wins."""
    try:
        value = old.read_text().strip()
    except (FileNotFoundError, IsADirectoryError):
        return
    if value:
        with contextlib.suppress(FileExistsError):
            write_secret(new, value)
    old.unlink(missing_ok=True)


def admin_token(settings: Settings) -> str:
    """The admin token: the setting, or ``$HEALMESH_HOME/secrets/admin_token`` (made once; one
    left at ``$HEALMESH_HOME/admin_token`` by an older install is moved there)."""
    if settings.admin_token:
        return settings.admin_token
    path = secret_path(settings, ADMIN_TOKEN)
    adopt_legacy(settings.home / ADMIN_TOKEN, path)
    return read_or_create(path)


def labeller_token(settings: Settings) -> str:
    """The labeller token (``POST /feedback``): the setting, or a generated file."""
    return settings.labeller_token or read_or_create(secret_path(settings, LABELLER_TOKEN))


def alerts_token(settings: Settings) -> str:
    """The alerts token (``POST /api/v1/alerts``, Alertmanager's webhook): the setting, or a
    generated file."""
    return settings.alerts_token or read_or_create(secret_path(settings, ALERTS_TOKEN))


def alerts_token_file(settings: Settings) -> Path:
    """The file holding the alerts token in effect, for the Alertmanager (which reads its bearer
    token from a file): ``$HEALMESH_HOME/secrets/alerts_token``, generated once; when
    ``HEALMESH_ALERTS_TOKEN`` is set, the file is made to hold that value (created afresh, 0600)."""
    path = secret_path(settings, ALERTS_TOKEN)
    token = alerts_token(settings)
    try:
        current = path.read_text().strip()
    except FileNotFoundError:
        current = None
    if current != token:
        path.unlink(missing_ok=True)
        with contextlib.suppress(FileExistsError):  # another process wrote it first: same value
            write_secret(path, token)
    return path


def redis_password_file(settings: Settings) -> Path:
    """The file holding the password of the Redis `healmesh up` runs: ``HEALMESH_REDIS_PASSWORD_FILE``
    when set (it must exist), else ``$HEALMESH_HOME/secrets/redis_password``, generated once."""
    if settings.redis_password_file is not None:
        if not settings.redis_password_file.is_file():
            raise FileNotFoundError(f"HEALMESH_REDIS_PASSWORD_FILE={settings.redis_password_file} does not exist")
        return settings.redis_password_file
    path = secret_path(settings, REDIS_PASSWORD)
    read_or_create(path, nbytes=32)
    return path


def bearer(header: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header ('' when absent)."""
    value = (header or "").strip()
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


def matches(given: str, expected: str | None) -> bool:
    """Constant-time comparison; an unset expected secret matches nothing."""
    if not expected or not given:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())
