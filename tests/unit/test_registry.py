"""The registry health check a scorer's alias follower runs every poll (issue 9, item 6).

Each ``httpx.get`` built a Client with an SSL context holding the CA bundle (about 830 KB of
native memory) and left it in a reference cycle. Serving processes collect garbage rarely
(``healmesh.heap.GC_THRESHOLDS`` after ``gc.freeze``), so an idle scorer kept one
per poll: +10 MB a minute at the 5 s default. These tests hold the collector off, as those
thresholds do for about an hour of idle polls, and count what the polls leave behind.
"""

from __future__ import annotations

import gc
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from healmesh import registry
from healmesh.ops import procs
from healmesh.settings import Settings
from healmesh.urls import local_url

POLLS = 20


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - the http.server hook's name
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"OK")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def registry_url(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", procs.free_port()), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = local_url(server.server_address[1])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    try:
        yield url
    finally:
        server.shutdown()
        server.server_close()


def _live_ssl_contexts() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, ssl.SSLContext))


def test_polls_leave_no_ssl_contexts_behind(registry_url: str) -> None:
    settings = Settings()
    gc.collect()
    before = _live_ssl_contexts()
    gc.disable()
    try:
        reachable = [registry.is_reachable(settings) for _ in range(POLLS)]
        left = _live_ssl_contexts() - before
    finally:
        gc.enable()
    assert all(reachable)
    # the old code left one per poll (20 here); one shared client holds at most one
    assert left <= 1, f"{POLLS} health checks left {left} SSL contexts alive"


def test_reachability_follows_the_server(registry_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings()
    assert registry.is_reachable(settings)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", local_url(procs.free_port()))  # nothing listens
    assert not registry.is_reachable(settings)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", registry_url)
    assert registry.is_reachable(settings)  # the shared client recovers from a failed check


def test_a_forked_child_gets_its_own_client(monkeypatch: pytest.MonkeyPatch) -> None:
    parent = registry._health_client()
    assert registry._health_client() is parent
    monkeypatch.setattr(registry.os, "getpid", lambda: -1)  # as os.getpid() reads in a child after fork
    assert registry._health_client() is not parent
