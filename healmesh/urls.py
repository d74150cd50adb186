"""Addresses of services on this host: every local URL and host:port is built here."""

from __future__ import annotations

LOCALHOST = "127.0.0.1"


def local_address(port: int) -> str:
    """``127.0.0.1:<port>``: what a server listens on, or a scrape target."""
    return f"{LOCALHOST}:{port}"


def local_url(port: int, path: str = "") -> str:
    """``http://127.0.0.1:<port><path>``; ``path`` starts with ``/`` when given."""
    return f"http://{local_address(port)}{path}"


def local_redis_url(port: int, db: int = 0) -> str:
    return f"redis://{local_address(port)}/{db}"
