"""Tests healmesh.gateway.feature_log: the spool files."""

import subprocess
import sys

from healmesh.gateway.feature_log import LogRecord, Spool


def records(n: int, start: int = 0) -> list[LogRecord]:
    return [LogRecord(f"{i:032x}", "primary", "1.0", {"i": i}) for i in range(start, start + n)]


def test_spool_keeps_order_and_moves_its_active_file_aside_before_replaying(tmp_path):
    spool = Spool(tmp_path)
    spool.append(records(3))
    spool.append(records(2, start=3))
    files = spool.pending()
    assert len(files) == 1 and not spool.active.exists()  # appends from now on go to a new file
    spool.append(records(1, start=5))
    read = [r.data["i"] for batch in Spool.read(files[0], chunk=2) for r in batch]
    assert read == [0, 1, 2, 3, 4]
    assert oct(files[0].stat().st_mode & 0o777) == "0o600"


def test_a_dead_process_spool_is_claimed_a_live_one_is_not(tmp_path):
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / f"{done.stdout.strip()}-12345.active.jsonl"
    dead.write_bytes(b"".join(r.to_line() for r in records(2)))
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import psutil

        owner = f"{live.pid}-{int(psutil.Process(live.pid).create_time() * 1000)}"
        (tmp_path / f"{owner}.active.jsonl").write_bytes(records(1)[0].to_line())
        mine = Spool(tmp_path)
        claimed = mine.pending()
        assert len(claimed) == 1 and claimed[0].name.startswith(mine.owner)
        assert [r.data["i"] for b in Spool.read(claimed[0], 10) for r in b] == [0, 1]
        assert (tmp_path / f"{owner}.active.jsonl").exists()  # a live writer's file is its own
    finally:
        live.kill()


def test_a_torn_last_line_is_skipped(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(records(1)[0].to_line() + b'{"request_id": "ab')
    assert [r.request_id for b in Spool.read(path, 10) for r in b] == [f"{0:032x}"]
