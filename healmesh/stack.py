"""`healmesh up / down / status`: the local mesh as background processes.

Each scorer is its own `bentoml serve` on 8001 to 8003 (so each can be killed, restarted
and scaled alone). Process ids go to ``$HEALMESH_HOME/run``, logs to ``$HEALMESH_HOME/logs``.
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
import time
from pathlib import Path

import httpx

from healmesh import procs
from healmesh.settings import Settings, get_settings

ROOT = Path(__file__).resolve().parents[1]


def scorer_ports(settings: Settings) -> dict[str, int]:
    return {"xgboost": settings.xgb_port, "pytorch": settings.torch_port, "fallback": settings.fallback_port}


def admin_token(settings: Settings) -> str:
    """The configured token, or one generated once and kept in ``$HEALMESH_HOME/admin_token``."""
    if settings.admin_token:
        return settings.admin_token
    path = settings.home / "admin_token"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(24))
        path.chmod(0o600)
    return path.read_text().strip()


def models_available(settings: Settings) -> bool:
    """Both model scorers have something to serve: a champion in the registry or a built-in model."""
    from healmesh import bento_store, registry

    if registry.is_reachable(settings):
        names = (settings.xgb_registered_name, settings.mlp_registered_name)
        if all(registry.version_by_alias(settings, n, settings.champion_alias) for n in names):
            return True
    import bentoml

    try:
        for name in (bento_store.XGB_BENTO_MODEL, bento_store.MLP_BENTO_MODEL):
            bentoml.models.get(f"{name}:latest")
    except bentoml.exceptions.NotFound:
        return False
    return True


def _pid_file(settings: Settings, name: str) -> Path:
    return settings.home / "run" / f"{name}.pid"


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def up(train_rows: int = 60_000) -> int:
    settings = get_settings()
    if not models_available(settings):
        print("no trained model yet: training first", file=sys.stderr)
        from healmesh.cli import main as cli_main

        code = cli_main(["train", "--n", str(train_rows)])
        if code:
            return code
    env = {"HEALMESH_ADMIN_TOKEN": admin_token(settings), "HEALMESH_HOME": str(settings.home)}
    started: list[procs.ServerProcess] = []
    for name, port in scorer_ports(settings).items():
        if _ready(port):
            print(f"{name:<9} already answering on {port}")
            continue
        if procs.port_open(port):
            print(f"{name:<9} port {port} is taken by something that is not a ready scorer", file=sys.stderr)
            return 1
        server = procs.bentoml_server(name, procs.SCORERS[name], port, settings.home / "logs", env=env, cwd=ROOT)
        server.start()
        _pid_file(settings, name).parent.mkdir(parents=True, exist_ok=True)
        _pid_file(settings, name).write_text(str(server.popen.pid if server.popen else ""))
        started.append(server)
    for server in started:
        try:
            server.wait_ready(timeout=120)
        except procs.ServerFailed as exc:
            print(str(exc), file=sys.stderr)
            return 1
        print(f"{server.name:<9} ready on {server.url}  (log: {server.log_path})")
    print(f"admin token: {settings.home / 'admin_token'} (or HEALMESH_ADMIN_TOKEN)")
    return status()


def down() -> int:
    settings = get_settings()
    for name in scorer_ports(settings):
        pid_file = _pid_file(settings, name)
        if not pid_file.exists():
            continue
        pid = int(pid_file.read_text() or 0)
        try:
            os.killpg(pid, signal.SIGTERM)
            for _ in range(50):
                os.killpg(pid, 0)
                time.sleep(0.2)
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        pid_file.unlink(missing_ok=True)
        print(f"{name:<9} stopped")
    return 0


def status() -> int:
    settings = get_settings()
    token = admin_token(settings)
    worst = 0
    for name, port in scorer_ports(settings).items():
        if not _ready(port):
            print(f"{name:<9} :{port}  DOWN")
            worst = 1
            continue
        try:
            state = httpx.get(f"http://127.0.0.1:{port}/admin/state", timeout=3,
                              headers={"Authorization": f"Bearer {token}"}).json()
            slots = state.get("slots", {})
            served = ", ".join(f"{slot}={m['model']} v{m['version']}" + (f" ({m['source']})" if "source" in m else "")
                               for slot, m in slots.items() if m)
        except (httpx.HTTPError, ValueError):
            served = "(admin API not reachable with this token)"
        print(f"{name:<9} :{port}  ready  {served}")
    return worst
