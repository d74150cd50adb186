"""Tests healmesh.gateway.metrics: a killed gateway worker's metrics files."""

import os
import subprocess
import sys
from pathlib import Path

from healmesh.gateway.metrics import forget_dead_workers

# --- the metrics files of a killed worker -----------------------------------------------------------

def dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_a_dead_workers_live_gauges_are_forgotten_and_its_counts_kept(tmp_path: Path):
    dead, me = dead_pid(), os.getpid()
    names = [f"gauge_livemax_{dead}.db", f"gauge_livesum_{dead}.db", f"gauge_livemin_{dead}.db",
             f"counter_{dead}.db", f"histogram_{dead}.db", f"gauge_max_{dead}.db",
             f"gauge_livemax_{me}.db", f"counter_{me}.db", "healmesh-something-else"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    assert forget_dead_workers(tmp_path) == [dead]
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(set(names) - {f"gauge_livemax_{dead}.db", f"gauge_livesum_{dead}.db",
                                        f"gauge_livemin_{dead}.db"})
    assert forget_dead_workers(tmp_path) == []  # nothing more to do
    assert forget_dead_workers(tmp_path / "absent") == []


def test_without_a_multiprocess_dir_there_is_nothing_to_forget(monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    assert forget_dead_workers() == []
