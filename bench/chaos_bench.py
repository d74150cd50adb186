"""The chaos matrix (127.0.0.1 only, bounded): one fault at a time under 64 wrk connections
through the gateway of a supervised mesh (`healmesh up` in a throwaway home, free ports), and
recovery with no human action.

Faults: SIGKILL of each scorer, of one gateway worker, of Redis, of MLflow and of Airflow's
scheduler (each a crash of the whole process tree, the gateway worker alone); a scorer that
hangs (2 s per prediction), one that answers garbage (200 with a body that does not parse),
one that fails its readiness probe (each of these for ``--fault-s`` seconds, on XGBoost).
Each row: client-visible errors (non-2xx and socket errors), p99 over the row, seconds until
the process is back (ready), seconds until the configured split is back (all breakers closed,
effective weights as configured), feature-log records dropped (the gateway's counter), labels
lost (labels acknowledged "stored" during the row but absent from Redis afterwards). The matrix
runs twice: traffic from many cards, and from one card (one body replayed: sticky routing).

    python bench/chaos_bench.py [--row-s 30] [--fault-s 10] [--no-airflow] [--out bench/results]

Writes ``chaos.json`` and ``chaos.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import write_results  # noqa: E402

from healmesh import schema  # noqa: E402
from healmesh.control import keys  # noqa: E402
from healmesh.data import generate  # noqa: E402
from healmesh.ops import procs  # noqa: E402

CONNECTIONS = 64
LOCAL = "127.0.0.1"
PREFIX = "healmesh"

WRK_SCRIPT = """
bodies = {%s}
i = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
request = function()
  i = i %% #bodies + 1
  return wrk.format(nil, nil, nil, bodies[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %%d %%f %%f %%d %%d %%d %%d %%d\\n", summary.requests, summary.duration / 1e6,
    latency:percentile(99) / 1e3, e.status, e.connect, e.read, e.write, e.timeout))
end
"""


class Mesh:
    def __init__(self, work: Path, airflow: bool) -> None:
        self.home = work / "home"
        self.ports = {n: procs.free_port() for n in ("gateway", "xgb", "torch", "fallback", "redis", "mlflow",
                                                      "airflow", "prometheus", "alertmanager")}
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("HEALMESH_", "MLFLOW_"))}
        self.env.update({"HEALMESH_HOME": str(self.home), "BENTOML_HOME": str(work / "bentoml"),
                         **{f"HEALMESH_{k.upper()}_PORT": str(v) for k, v in self.ports.items()}})
        self.airflow = airflow

    def cli(self, *args: str, timeout: float = 1_200) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "healmesh.ops.cli", *args], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def settings(self) -> Any:
        from healmesh.settings import Settings

        return Settings(home=self.home, admin_token=None, labeller_token=None,
                        **{f"{k}_port": v for k, v in self.ports.items()})

    def headers(self, who: str) -> dict[str, str]:
        from healmesh import credentials

        s = self.settings()
        token = credentials.admin_token(s) if who == "admin" else credentials.labeller_token(s)
        return {"Authorization": f"Bearer {token}"}

    def url(self, name: str) -> str:
        return f"http://{LOCAL}:{self.ports[name]}"

    def supervisor(self) -> Any:
        from healmesh.ops.supervisor.client import Supervisor

        return Supervisor(self.home / "run")

    def state(self) -> dict[str, Any] | None:
        try:
            return httpx.get(self.url("gateway") + "/api/v1/admin/state", headers=self.headers("admin"),
                             timeout=3).json()
        except (httpx.HTTPError, ValueError):
            return None

    def split_back(self) -> bool:
        """The configured split in effect: every weighted variant's breaker closed (a variant
        with no weight, the idle canary, gets no traffic to close its breaker on) and the
        effective weights equal to the configured ones."""
        state = self.state()
        if not state:
            return False
        configured = state["control"]["weights"]
        effective = state["effective_weights"]
        return all(state["breakers"][v]["state"] == "closed" for v, w in configured.items() if w > 0) and \
            all(abs(effective.get(v, 0.0) - w) < 1e-6 for v, w in configured.items())

    def dropped(self) -> float:
        text = httpx.get(self.url("gateway") + "/metrics", timeout=5).text
        m = re.search(r'^healmesh_gateway_feature_log_records_total\{state="dropped"\} (\S+)$', text, re.M)
        return float(m.group(1)) if m else 0.0


def ready(program: str, mesh: Mesh) -> bool:
    from healmesh.ops.supervisor import client
    from healmesh.ops.supervisor.spec import Spec

    spec = Spec.load(mesh.home / "run")
    sup = mesh.supervisor()
    try:
        pids = sup.pids(program)
    except Exception:
        return False
    return bool(pids) and client.answers_ready(spec.program(program), running=True)


def wait(predicate: Any, timeout: float) -> float | None:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if predicate():
                return round(time.monotonic() - start, 1)
        except Exception:  # noqa: BLE001 - a part that is down answers nothing: keep asking
            pass
        time.sleep(0.2)
    return None


# --- faults ------------------------------------------------------------------------------------

def kill(program: str) -> Any:
    def inject(mesh: Mesh) -> None:
        for pid in mesh.supervisor().pids(program):
            procs.kill_tree(pid)
    return inject


def kill_gateway_worker(mesh: Mesh) -> None:
    (arbiter,) = mesh.supervisor().pids("gateway")
    workers = [p for p in psutil.Process(arbiter).children(recursive=True)
               if "_bentoml_impl.worker" in " ".join(p.cmdline())]
    os.kill(workers[0].pid, signal.SIGKILL)


def scorer_fault(body: dict[str, Any]) -> tuple[Any, Any]:
    def on(mesh: Mesh) -> None:
        httpx.put(mesh.url("xgb") + "/admin/faults", json=body, headers=mesh.headers("admin"), timeout=5)

    def off(mesh: Mesh) -> None:
        httpx.delete(mesh.url("xgb") + "/admin/faults", headers=mesh.headers("admin"), timeout=5)
    return on, off


ROWS: list[tuple[str, str | None, Any, Any]] = [  # name, program that must come back, inject, clear
    ("SIGKILL xgboost scorer", "xgboost", kill("xgboost"), None),
    ("SIGKILL pytorch scorer", "pytorch", kill("pytorch"), None),
    ("SIGKILL fallback scorer", "fallback", kill("fallback"), None),
    ("SIGKILL one gateway worker", "gateway", kill_gateway_worker, None),
    ("SIGKILL redis", "redis", kill("redis"), None),
    ("SIGKILL mlflow", "mlflow", kill("mlflow"), None),
    ("SIGKILL airflow scheduler", "airflow-scheduler", kill("airflow-scheduler"), None),
    ("xgboost hangs (2 s a prediction)", None, *scorer_fault({"latency_ms": 2000})),
    ("xgboost answers garbage", None, *scorer_fault({"garbage_rate": 1.0})),
    ("xgboost fails its readiness probe", None, *scorer_fault({"fail_readyz": True})),
]


class Labeller(threading.Thread):
    """Predict-then-label pairs, about 10 a second, through the gateway during a row."""

    def __init__(self, mesh: Mesh, bodies: list[dict[str, Any]], stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.mesh, self.bodies, self.stop = mesh, bodies, stop
        self.stored: list[str] = []

    def run(self) -> None:
        with httpx.Client(timeout=5) as client:
            i = 0
            while not self.stop.is_set():
                i += 1
                try:
                    r = client.post(self.mesh.url("gateway") + "/api/v1/predict",
                                    json=self.bodies[i % len(self.bodies)])
                    rid = r.json()["request_id"]
                    time.sleep(0.05)
                    f = client.post(self.mesh.url("gateway") + "/api/v1/feedback", json={"request_id": rid, "label": 1},
                                    headers=self.mesh.headers("labeller"))
                    if f.status_code == 200 and f.json().get("status") == "stored":
                        self.stored.append(rid)
                except (httpx.HTTPError, ValueError, KeyError):
                    pass
                time.sleep(0.05)


def labels_lost(mesh: Mesh, ids: list[str]) -> int | None:
    from healmesh import redis_conn

    try:
        r = redis_conn.sync_client(mesh.settings())
        return sum(1 for rid in ids if r.hget(keys.bucket_key(PREFIX, rid) or "", f"{rid}:l") is None)
    except Exception:  # noqa: BLE001
        return None


def run_row(mesh: Mesh, row: tuple[str, str | None, Any, Any], script: Path, row_s: int, fault_s: int,
            label_bodies: list[dict[str, Any]]) -> dict[str, Any]:
    name, program, inject, clear = row
    assert wait(mesh.split_back, 180) is not None, f"{name}: the mesh did not settle before the row"
    dropped_before = mesh.dropped()
    stop = threading.Event()
    labeller = Labeller(mesh, label_bodies, stop)
    labeller.start()
    wrk = subprocess.Popen(["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{row_s}s", "--timeout", "10s", "-s", str(script),
                            mesh.url("gateway") + "/api/v1/predict"], stdout=subprocess.PIPE, text=True)
    time.sleep(3)
    t_fault = time.monotonic()
    inject(mesh)
    back_s = None
    if program:
        time.sleep(0.5)
        back_s = wait(lambda: ready(program, mesh), 120)
    else:
        time.sleep(fault_s)
        clear(mesh)
    split_s = wait(mesh.split_back, 180)
    split_after_fault = round(time.monotonic() - t_fault, 1) if split_s is not None else None
    back_after_fault = back_s  # measured from half a second after the fault: see below
    if back_s is not None:
        back_after_fault = round(back_s + 0.5, 1)
    out, _ = wrk.communicate(timeout=row_s + 300)
    stop.set()
    labeller.join(timeout=30)
    m = re.search(r"^RESULT (.*)$", out, re.M)
    req, dur, p99, status, connect, read, write, timeout = m.group(1).split() if m else ["0"] * 8
    wait(lambda: mesh.state() is not None and mesh.state()["feature_log"]["redis_up"], 60)
    time.sleep(2)  # a flush interval: what was buffered while Redis was away is written
    return {"fault": name, "requests": int(req), "client_errors": int(status) + int(connect) + int(read) +
            int(write) + int(timeout), "non_2xx": int(status), "socket_errors": int(connect) + int(read) +
            int(write) + int(timeout), "p99_ms": round(float(p99), 1),
            "seconds_until_back": back_after_fault if program else None,
            "split_back_after_fault_s": split_after_fault,
            "records_dropped": int(mesh.dropped() - dropped_before),
            "labels_stored": len(labeller.stored), "labels_lost": labels_lost(mesh, labeller.stored)}


def card_bodies(n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` request bodies with their cards (sticky routing keys), as JSON-ready dicts."""
    cols = list(schema.active().feature_names) + [schema.active().entity_key]
    frame = generate(n, seed=seed)
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in frame[cols].to_dict("records")]


def lua_bodies(bodies: list[dict[str, Any]]) -> str:
    return ",".join("[==[" + json.dumps(b) + "]==]" for b in bodies)


def markdown(results: dict[str, Any]) -> str:
    lines = [f"# Chaos matrix ({results['when']})", "",
             f"`python bench/chaos_bench.py` on {results['machine']}: {CONNECTIONS} wrk connections through the "
             f"gateway of a supervised mesh ({results['gateway_workers']} gateway workers), one fault at a time; "
             f"each row {results['row_s']} s of load, the fault 3 s in (hang, garbage and readiness faults last "
             f"{results['fault_s']} s). Seconds are from the fault; 'split back' is all breakers closed and the "
             "configured weights in effect.", ""]
    for mode, rows in results["modes"].items():
        lines += [f"## {mode}", "", "| fault | requests | client errors | p99 ms | back (ready) s | split back s | "
                  "records dropped | labels stored / lost |", "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['fault']} | {r['requests']} | {r['client_errors']} ({r['non_2xx']} non-2xx, "
                         f"{r['socket_errors']} socket) | {r['p99_ms']} | {r['seconds_until_back'] or '-'} | "
                         f"{r['split_back_after_fault_s'] if r['split_back_after_fault_s'] is not None else 'not back'}"
                         f" | {r['records_dropped']} | {r['labels_stored']} / {r['labels_lost']} |")
        lines.append("")
    lines += ["Goals: 0 client errors for every scorer fault and for Redis and MLflow; a killed process ready within "
              "10 s and its full share within 20 s; a killed gateway worker costs at most its requests in flight; "
              "0 records lost.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--row-s", type=int, default=30)
    parser.add_argument("--fault-s", type=int, default=10)
    parser.add_argument("--no-airflow", action="store_true")
    parser.add_argument("--modes", default="many cards,one card")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk not found: apt-get install wrk")
    work = Path(tempfile.mkdtemp(prefix="healmesh-chaos-"))
    mesh = Mesh(work, airflow=not args.no_airflow)
    rows = [r for r in ROWS if not (args.no_airflow and r[1] == "airflow-scheduler")]
    many = card_bodies(2_000, seed=11)
    results: dict[str, Any] = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                               "machine": f"{platform.machine()}, {os.cpu_count()} cores", "row_s": args.row_s,
                               "fault_s": args.fault_s, "modes": {}}
    try:
        print("starting the mesh (healmesh up) ...", flush=True)
        up = mesh.cli("up", "--n", "20000", *([] if mesh.airflow else ["--no-airflow"]))
        if up.returncode:
            raise SystemExit(f"healmesh up failed:\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}")
        results["gateway_workers"] = len([p for p in psutil.Process(mesh.supervisor().pids("gateway")[0])
                                          .children(recursive=True) if "_bentoml_impl.worker" in " ".join(p.cmdline())])
        for mode in args.modes.split(","):
            bodies = many if mode == "many cards" else many[:1]
            script = work / f"wrk-{mode.replace(' ', '-')}.lua"
            script.write_text(WRK_SCRIPT % lua_bodies(bodies))
            results["modes"][mode] = []
            for row in rows:
                print(f"[{mode}] {row[0]} ...", flush=True)
                result = run_row(mesh, row, script, args.row_s, args.fault_s, many[100:200])
                print(f"  {result}", flush=True)
                results["modes"][mode].append(result)
                write_results(Path(args.out), "chaos", results, markdown(results))
    finally:
        mesh.cli("down", timeout=300)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
