"""`up`'s and `status`'s verdict on real supervised programs (issue 27): a program that was ready
and then misses one probe (a late answer, or a 503) is still ready, and `status` exits 0; a
program that stays unready makes it exit 1 and says, first and on stderr, which program, which
check and how it failed. No clock: the test tells the program when to miss its next probe."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from healmesh.ops import procs, stack
from healmesh.ops.supervisor import client, daemon
from healmesh.ops.supervisor.spec import Program, Spec
from healmesh.settings import Settings

from .conftest import ROOT

pytestmark = pytest.mark.integration

# /ready answers 200, but once after the file `miss` appears: 503 (mode "503") or 3 s late (mode
# "late", past the probe's 2 s timeout); the miss is written down in `missed`. Mode "never": 503.
SERVER = """
import http.server, pathlib, sys, time
port, mode, folder = int(sys.argv[1]), sys.argv[2], pathlib.Path(sys.argv[3])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        code = 503 if mode == "never" else 200
        if (folder / "miss").exists():
            (folder / "miss").unlink()
            (folder / "missed").write_text(mode)
            if mode == "late":
                time.sleep(3)
            else:
                code = 503
        self.send_response(code); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def _program(name: str, mode: str, folder: Path, logs: Path) -> Program:
    port = procs.free_port()
    return Program(name=name, argv=(sys.executable, "-c", SERVER, str(port), mode, str(folder)),
                   log_path=str(logs / f"{name}.log"), port=port, ready_path="/ready")


def _mesh(home: Path, programs: list[Program]) -> Iterator[Settings]:
    run, logs = home / "run", home / "logs"
    spec = Spec(run_dir=str(run), log_dir=str(logs), programs=tuple(programs))
    sup = client.start_daemon(spec, cwd=ROOT)
    settings = Settings(home=home)
    try:
        for p in programs:
            sup.start(p.name)
        (run / stack.WANTED).write_text('["' + '", "'.join(p.name for p in programs) + '"]')
        yield settings
    finally:
        sup.quit()
        for program in spec.programs:
            for proc in daemon.leftovers(spec.run_dir, program):
                proc.kill()


def _wait_answering(program: Program) -> None:
    deadline = time.monotonic() + 30
    while not procs.port_open(program.port or 0):
        assert time.monotonic() < deadline, f"{program.name} never listened"
        time.sleep(0.1)


@pytest.mark.parametrize("mode", ["503", "late"])
def test_a_ready_program_that_misses_one_probe_is_still_ready(tmp_path, mode, capsys):
    home = tmp_path / "home"
    (home / "logs").mkdir(parents=True)
    web = _program("web", mode, tmp_path, home / "logs")
    for settings in _mesh(home, [web]):
        _wait_answering(web)
        assert stack.status(settings) == 0
        (tmp_path / "miss").write_text("")  # the next probe is answered late, or 503
        assert stack.status(settings) == 0, capsys.readouterr().err
        assert (tmp_path / "missed").read_text() == mode  # the miss did happen, inside that verdict


def test_a_program_that_stays_unready_fails_the_verdict_and_says_how(tmp_path, capsys):
    home = tmp_path / "home"
    (home / "logs").mkdir(parents=True)
    web, never = _program("web", "503", tmp_path, home / "logs"), _program("never", "never", tmp_path, home / "logs")
    for settings in _mesh(home, [web, never]):
        _wait_answering(never)
        capsys.readouterr()
        assert stack.status(settings) == 1
        err = capsys.readouterr().err
        first = err.splitlines()[0]
        assert first.startswith("healmesh: never is starting:") and "/ready answered 503" in first, err
        assert "3 failed probes in a row" in first and "web" not in first
        assert stack.status(settings, as_json=True) == 1
        data = stack.report(settings)
        assert {p["name"]: p["why"] for p in data["processes"]}["web"] is None
        assert "answered 503" in {p["name"]: p["why"] for p in data["processes"]}["never"]
