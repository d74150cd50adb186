"""Local servers: stopping one stops its whole tree; what it writes (logs, files, config) is private."""

from __future__ import annotations

import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil

from healmesh.ops import procs

# a parent whose child starts a new session (as BentoML's workers run in groups of their own)
PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
print(child.pid, flush=True)
time.sleep(60)
"""


def _spawn() -> tuple[subprocess.Popen[str], int]:
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    assert parent.stdout is not None
    return parent, int(parent.stdout.readline())


def _gone(pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def test_kill_tree_kills_a_child_in_its_own_process_group():
    parent, child = _spawn()
    try:
        assert psutil.Process(child).pid == child
        assert procs.kill_tree(parent.pid)
        parent.wait(timeout=5)
        assert _gone(child)
    finally:
        procs.signal_all(procs.process_tree(child), signal.SIGKILL)


def test_stop_leaves_no_orphan_worker():
    parent, child = _spawn()
    server = procs.ServerProcess(name="t", cmd=[], port=0, log_path=Path("/dev/null"))
    server.popen = parent
    try:
        server.stop(timeout=2)
        assert parent.poll() is not None
        assert _gone(child)
    finally:
        procs.signal_all(procs.process_tree(child), signal.SIGKILL)


def test_kill_tree_of_nothing_is_false():
    parent, child = _spawn()
    procs.kill_tree(parent.pid)
    parent.wait(timeout=5)
    assert _gone(child)
    assert not procs.kill_tree(parent.pid)


# --- what a server may read and write -----------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_server_and_the_files_it_makes_are_its_owners_alone(tmp_path):
    log = tmp_path / "logs" / "t.log"
    log.parent.mkdir()
    log.write_text("an older line\n")
    log.chmod(0o644)  # a log an older install left readable by everyone
    made = tmp_path / "made-by-the-server"
    server = procs.ServerProcess(name="t", port=0, log_path=log,
                                 cmd=[sys.executable, "-c", f"open({str(made)!r}, 'w').write('x'); print('started')"])
    server.start()
    assert server.popen is not None and server.popen.wait(timeout=60) == 0
    assert _mode(made) == 0o600  # the child ran with umask 077
    assert _mode(log) == 0o600
    assert log.read_text() == "an older line\nstarted\n"  # appended to, not replaced


def test_a_new_log_and_its_directory_are_created_private(tmp_path):
    log = tmp_path / "new-logs" / "t.log"
    server = procs.ServerProcess(name="t", cmd=[sys.executable, "-c", "print('hi')"], port=0, log_path=log)
    server.start()
    assert server.popen is not None and server.popen.wait(timeout=60) == 0
    assert _mode(log) == 0o600 and _mode(log.parent) == 0o700


def test_redis_config_carries_password_memory_cap_eviction_and_aof():
    config = procs.RedisConfig(port=6390, state_dir=Path('/srv/a "b"'), password='pa"ss\\word', persist=True,
                               appendfsync="everysec", maxmemory="1gb", maxmemory_policy="volatile-ttl")
    lines = config.render().splitlines()
    for line in ["port 6390", "bind 127.0.0.1", "protected-mode yes", "appendonly yes", "appendfsync everysec",
                 "maxmemory 1gb", "maxmemory-policy volatile-ttl", 'requirepass "pa\\"ss\\\\word"',
                 'dir "/srv/a \\"b\\""']:
        assert line in lines, line
    plain = procs.RedisConfig(port=6390, state_dir=Path("/srv")).render()
    assert "requirepass" not in plain and "appendonly no" in plain.splitlines()


def test_redis_gets_its_password_in_a_0600_config_file_never_in_its_arguments(tmp_path):
    server = procs.redis_server(6390, tmp_path / "state", tmp_path / "logs", password="s3cret-value-42")
    assert not any("s3cret" in arg for arg in server.cmd)  # `ps` shows arguments to every user
    conf = Path(server.cmd[-1])
    assert conf.parent == tmp_path / "state" and _mode(conf) == 0o600 and _mode(conf.parent) == 0o700
    assert 'requirepass "s3cret-value-42"' in conf.read_text().splitlines()


def test_free_ports_are_outside_the_kernels_ephemeral_range_and_never_handed_out_twice():
    """A port the kernel may give any bind(0) or outgoing connection meanwhile is no port to hand
    out for a server started later (a landing CI run: "address already in use" for Alertmanager)."""
    low, high = (int(x) for x in procs.EPHEMERAL_RANGE_FILE.read_text().split())
    ports = [procs.free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    assert not [p for p in ports if low <= p <= high]
    assert all(p >= 10_000 for p in ports)


def test_spare_ports_avoid_any_ephemeral_range():
    assert procs.spare_ports((32768, 60999)) == range(10_000, 32768)
    assert procs.spare_ports((1024, 50000)) == range(50001, 65536)  # nothing spare below: above
    assert procs.spare_ports((1024, 65000)) == range(0)  # none at all: free_port asks the kernel


def test_airflow_tasks_ask_the_api_on_its_own_port_not_8080(tmp_path):
    """A task fetches its work from the execution API; Airflow's default URL names port 8080
    whatever port the API server listens on, so on another port every task failed to start."""
    env = procs.airflow_env(18_267, tmp_path / "airflow", tmp_path / "dags")
    assert env["AIRFLOW__API__PORT"] == "18267"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:18267/execution/"
