"""Soak (127.0.0.1 only, bounded): the supervised mesh (`healmesh up` in a throwaway home, free
ports) under 64 wrk connections from many cards for ``--load-min`` minutes, with a canary
rollout in the middle (the challenger alias set, stages 10 -> 50 -> 100, rolled back), then
``--idle-min`` idle minutes. The resident memory (RSS) of every supervised program, its whole
process tree, is sampled each minute.

Goal: every program flat within 5 % after warm-up (``--warmup-min``): its largest and
smallest minute after warm-up, load and idle alike, within 5 % of each other.

    python bench/soak_bench.py [--load-min 30] [--idle-min 10] [--warmup-min 5] [--no-airflow]

Writes ``soak.json`` and ``soak.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from chaos_bench import WRK_SCRIPT, Mesh, card_bodies, lua_bodies, wait  # noqa: E402
from common import write_results  # noqa: E402

from healmesh.ops import procs  # noqa: E402

MB = 1024 * 1024


def rss_by_program(mesh: Mesh) -> dict[str, float]:
    from healmesh.ops.supervisor.spec import Spec

    sup = mesh.supervisor()
    out = {}
    for program in Spec.load(mesh.home / "run").programs:
        try:
            pids = sup.pids(program.name)
        except Exception:  # noqa: BLE001
            pids = []
        out[program.name] = round(sum(p.memory_info().rss for pid in pids for p in procs.process_tree(pid)) / MB, 1)
    return out


def rollout(mesh: Mesh, say: Any) -> None:
    """The challenger alias on the champion's version (the XGBoost scorer loads it into its
    canary slot), stages 10, 50 and 100 a minute apart, then rolled back."""
    from healmesh import registry
    from healmesh.settings import Settings

    settings = Settings(home=mesh.home, mlflow_tracking_uri=mesh.url("mlflow"), admin_token=None)
    name = settings.xgb_registered_name
    champion = registry.version_by_alias(settings, name, settings.champion_alias)
    assert champion is not None
    registry.set_alias(settings, name, settings.challenger_alias, champion.version)
    admin = mesh.headers("admin")
    httpx.post(mesh.url("xgb") + "/admin/reload", headers=admin, timeout=60)
    for stage in (10, 50, 100):
        r = httpx.put(mesh.url("gateway") + "/api/v1/admin/rollout", headers=admin, timeout=30,
                      json={"stage": stage, "canary_version": champion.version, "status": "running",
                            "who": "soak", "why": "soak benchmark"})
        say(f"rollout stage {stage}: {r.status_code}")
        time.sleep(60)
    r = httpx.put(mesh.url("gateway") + "/api/v1/admin/rollout", headers=admin, timeout=30,
                  json={"stage": 0, "status": "rolled_back", "who": "soak", "why": "soak benchmark"})
    registry.delete_alias(settings, name, settings.challenger_alias)
    say(f"rollout rolled back: {r.status_code}")


def markdown(res: dict[str, Any]) -> str:
    names = list(res["samples"][0]["rss_mb"])
    lines = [f"# Soak ({res['when']})", "",
             f"`python bench/soak_bench.py` on {res['machine']}: {res['load_min']} minutes at 64 wrk connections "
             f"through the gateway (many cards), a canary rollout from minute {res['rollout_at_min']} (stages 10, 50, "
             f"100 a minute apart, then rolled back), then {res['idle_min']} idle minutes. RSS of each supervised "
             f"program's whole process tree, MB, each minute. Load: {res['wrk']}.", "",
             "| minute | phase | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for s in res["samples"]:
        lines.append(f"| {s['minute']} | {s['phase']} | " + " | ".join(f"{s['rss_mb'][n]:.0f}" for n in names) + " |")
    lines += ["", f"## After warm-up (minute {res['warmup_min']} on): spread = (max - min) / min; goal 5 %", "",
              "| program | min MB | max MB | spread | first -> last MB | flat |", "|---|---|---|---|---|---|"]
    for n, v in res["verdict"].items():
        lines.append(f"| {n} | {v['min']:.0f} | {v['max']:.0f} | {v['spread']:.1%} | {v['first']:.0f} -> "
                     f"{v['last']:.0f} | {'yes' if v['flat'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--load-min", type=int, default=30)
    parser.add_argument("--idle-min", type=int, default=10)
    parser.add_argument("--warmup-min", type=int, default=5)
    parser.add_argument("--no-airflow", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk not found: apt-get install wrk")
    work = Path(tempfile.mkdtemp(prefix="healmesh-soak-"))
    mesh = Mesh(work, airflow=not args.no_airflow)
    t0 = time.monotonic()

    def say(msg: str) -> None:
        print(f"[{(time.monotonic() - t0) / 60:5.1f} min] {msg}", flush=True)

    bodies = card_bodies(2_000, seed=12)
    script = work / "wrk-soak.lua"
    script.write_text(WRK_SCRIPT % lua_bodies(bodies))
    rollout_at = args.load_min // 2
    res: dict[str, Any] = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                           "machine": f"{platform.machine()}, {os.cpu_count()} cores", "load_min": args.load_min,
                           "idle_min": args.idle_min, "warmup_min": args.warmup_min, "rollout_at_min": rollout_at,
                           "samples": []}
    try:
        say("starting the mesh (healmesh up) ...")
        up = mesh.cli("up", "--n", "20000", *([] if mesh.airflow else ["--no-airflow"]))
        if up.returncode:
            raise SystemExit(f"healmesh up failed:\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}")
        assert wait(mesh.split_back, 180) is not None
        t0 = time.monotonic()
        wrk = subprocess.Popen(["wrk", "-t2", "-c64", f"-d{args.load_min * 60}s", "--timeout", "10s", "-s",
                                str(script), mesh.url("gateway") + "/api/v1/predict"],
                               stdout=subprocess.PIPE, text=True)
        for minute in range(args.load_min + args.idle_min + 1):
            while time.monotonic() - t0 < minute * 60:
                time.sleep(1)
            if minute == rollout_at:
                import threading

                threading.Thread(target=rollout, args=(mesh, say), daemon=True).start()
            phase = "load" if minute < args.load_min else "idle"
            if minute == args.load_min:
                out, _ = wrk.communicate(timeout=300)
                m = re.search(r"^RESULT (.*)$", out, re.M)
                if m:
                    req, dur, p99, status, connect, read, write, timeout = m.group(1).split()
                    res["wrk"] = (f"{int(req):,} requests, p99 {float(p99):.0f} ms, {int(status)} non-2xx, "
                                  f"{int(connect) + int(read) + int(write) + int(timeout)} socket errors")
            sample = {"minute": minute, "phase": phase, "rss_mb": rss_by_program(mesh)}
            res["samples"].append(sample)
            say(f"{phase}: {sample['rss_mb']}")
        res.setdefault("wrk", "(no wrk result)")
        after = [s for s in res["samples"] if s["minute"] >= args.warmup_min]
        res["verdict"] = {}
        for name in after[0]["rss_mb"]:
            values = [s["rss_mb"][name] for s in after if s["rss_mb"][name] > 0]
            if not values:
                continue
            lo, hi = min(values), max(values)
            spread = (hi - lo) / lo
            res["verdict"][name] = {"min": lo, "max": hi, "spread": round(spread, 4), "first": values[0],
                                    "last": values[-1], "flat": spread <= 0.05}
        write_results(Path(args.out), "soak", res, markdown(res))
    finally:
        mesh.cli("down", timeout=300)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
