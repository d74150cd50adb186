"""Idle memory of a scorer: the worker's RSS while nothing but its alias follower runs.

    python bench/idle_rss_bench.py [--scorer xgboost] [--burst 20] [--idle-min 3] [--poll-s 0.5]
                                   [--every 10] [--label new] [--code DIR]

Starts an MLflow server on a free port (temporary SQLite store), trains and registers small
models as ``champion``, serves one scorer with ``bentoml serve`` following that registry
every ``--poll-s`` seconds, gives it ``--burst`` seconds of wrk load (16 connections; 0 for
none), then samples the worker's RSS (the bento worker process, child of BentoML's arbiter)
every ``--every`` seconds for ``--idle-min`` minutes with no traffic, and fits a slope.

A smaller ``--poll-s`` speeds up whatever grows per registry poll: at 0.5 s a worker polls 10x
as often as at the default 5 s. ``--code`` runs the scorer from another checkout (its
``healmesh`` and ``bentos``), to compare revisions with the same harness.

Results go to ``--out``/idle_rss.json (one run per ``--label``, earlier labels kept) and
idle_rss.md (a table per run and the slopes). Everything listens on 127.0.0.1 only and is
stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import one_transaction, run_wrk  # noqa: E402

from healmesh.ops import procs  # noqa: E402


def worker_process(server: procs.ServerProcess) -> psutil.Process:
    """The process that serves the bento: the leaf of the server's tree with the largest RSS
    (the arbiter and its watchers are small; the worker holds the model and the follower)."""
    assert server.popen is not None
    tree = procs.process_tree(server.popen.pid)
    leaves = [p for p in tree if p.pid != server.popen.pid and not p.children()]
    if not leaves:
        raise RuntimeError(f"no worker under pid {server.popen.pid}")
    return max(leaves, key=lambda p: p.memory_info().rss)


def slope_mb_per_min(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) samples, in MB per minute."""
    n = len(samples)
    if n < 2:
        return 0.0
    mt = sum(t for t, _ in samples) / n
    mm = sum(m for _, m in samples) / n
    var = sum((t - mt) ** 2 for t, _ in samples)
    return 60.0 * sum((t - mt) * (m - mm) for t, m in samples) / var if var else 0.0


def registry_syncs(url: str, token: str) -> int | None:
    try:
        state = httpx.get(url + "/admin/state", headers={"Authorization": f"Bearer {token}"}, timeout=5).json()
        return int(state["registry"]["syncs"])
    except (httpx.HTTPError, KeyError, ValueError, TypeError):
        return None


def render(runs: dict[str, Any]) -> str:
    lines = ["# Idle RSS of a scorer worker", "",
             "`python bench/idle_rss_bench.py` (see its docstring). The worker's RSS is sampled while the",
             "scorer is idle: no requests, only its alias follower polling the MLflow registry.", "",
             "At `--poll-s 0.5` a worker polls about 8x as often as at the 5 s default (a poll's own",
             "requests take time too): what grows per poll grows 8x faster here.", "",
             "| run | scorer | poll | burst | idle | polls while idle | RSS start | RSS end | per poll | slope |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for label, r in runs.items():
        s = r["samples"]
        polls = "" if r["idle_polls"] is None else f"{r['idle_polls']:,}"
        per_poll = (f"{(s[-1]['rss_mb'] - s[0]['rss_mb']) * 1024 / r['idle_polls']:+.0f} KB" if r["idle_polls"]
                    else "")
        lines.append(f"| {label} | {r['scorer']} | {r['poll_s']} s | {r['burst_s']} s | {r['idle_min']} min | {polls} "
                     f"| {s[0]['rss_mb']:.1f} MB | {s[-1]['rss_mb']:.1f} MB | {per_poll} "
                     f"| **{r['slope_mb_per_min']:+.2f} MB/min** |")
    for label, r in runs.items():
        lines += ["", f"## {label}", "", f"{r['date']}, {r['machine']}, {r['cpus']} CPUs, code `{r['code']}`"
                  + (f", burst {r['burst']['requests']:,} requests at {r['burst']['rps']:,} req/s" if r.get("burst")
                     else "") + ".", "", "| idle s | worker RSS MB |", "|---|---|"]
        lines += [f"| {x['t_s']:.0f} | {x['rss_mb']:.1f} |" for x in r["samples"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scorer", choices=["xgboost", "pytorch"], default="xgboost")
    ap.add_argument("--burst", type=int, default=20, help="seconds of load before the idle phase (0: none)")
    ap.add_argument("--idle-min", type=float, default=3.0, help="idle minutes to sample")
    ap.add_argument("--every", type=float, default=10.0, help="seconds between RSS samples")
    ap.add_argument("--poll-s", type=float, default=0.5, help="HEALMESH_ALIAS_POLL_S of the scorer")
    ap.add_argument("--rows", type=int, default=5_000, help="training rows for the registered models")
    ap.add_argument("--label", default="run", help="name of this run in the results (earlier labels are kept)")
    ap.add_argument("--code", type=Path, default=ROOT, help="checkout whose healmesh/bentos the scorer runs")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    if args.burst and not shutil.which("wrk"):
        raise SystemExit("wrk not found (apt-get install wrk), or pass --burst 0")

    work = Path(tempfile.mkdtemp(prefix="healmesh-idle-rss-"))
    code = args.code.resolve()
    token = secrets.token_urlsafe(24)
    env = {"HEALMESH_HOME": str(work / "home"), "BENTOML_HOME": str(work / "bentoml")}
    os.environ.update(env)
    os.environ.pop("HEALMESH_MLFLOW_TRACKING_URI", None)
    mlflow = procs.mlflow_server(procs.free_port(), work / "mlflow", work / "logs")
    scorer: procs.ServerProcess | None = None
    try:
        mlflow.launch(timeout=120)
        print(f"mlflow on {mlflow.url}; training on {args.rows} rows ...", flush=True)
        # training in a child, from the compared checkout, so both runs register the same way
        subprocess.run([sys.executable, "-m", "healmesh.ops.cli", "train", "--n", str(args.rows)], check=True, cwd=code,
                       env={**os.environ, "PYTHONPATH": str(code), "MLFLOW_TRACKING_URI": mlflow.url},
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        scorer = procs.bentoml_server(f"idle-{args.scorer}", procs.SCORERS[args.scorer], procs.free_port(),
                                      work / "logs", cwd=code,
                                      env={**env, "PYTHONPATH": str(code), "MLFLOW_TRACKING_URI": mlflow.url,
                                           "HEALMESH_ADMIN_TOKEN": token, "HEALMESH_ALIAS_POLL_S": str(args.poll_s)})
        scorer.launch(timeout=180)
        worker = worker_process(scorer)
        print(f"{args.scorer} scorer on {scorer.url}, worker pid {worker.pid}, "
              f"RSS {worker.memory_info().rss / 2**20:.1f} MB", flush=True)
        burst = None
        if args.burst:
            burst = run_wrk(scorer.url + "/predict", json.dumps({"rows": [one_transaction()]}), 16, args.burst, work)
            print(f"burst: {burst['requests']:,} requests, {burst['rps']} req/s", flush=True)
        syncs0 = registry_syncs(scorer.url, token)
        samples: list[dict[str, float]] = []
        start = time.monotonic()
        n = int(args.idle_min * 60 / args.every)
        for i in range(n + 1):
            time.sleep(max(0.0, start + i * args.every - time.monotonic()))
            rss = worker.memory_info().rss / 2**20
            samples.append({"t_s": round(time.monotonic() - start, 1), "rss_mb": round(rss, 2)})
            print(f"  t={samples[-1]['t_s']:>6.1f}s  RSS {rss:8.1f} MB", flush=True)
        syncs1 = registry_syncs(scorer.url, token)
        idle_polls = syncs1 - syncs0 if syncs0 is not None and syncs1 is not None else None
    finally:
        if scorer is not None:
            scorer.stop()
        mlflow.stop()
        shutil.rmtree(work, ignore_errors=True)

    slope = slope_mb_per_min([(x["t_s"], x["rss_mb"]) for x in samples])
    print(f"slope {slope:+.2f} MB/min over {args.idle_min} idle minutes ({idle_polls} registry polls)")
    run = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": platform.platform(),
           "cpus": os.cpu_count(), "code": str(code), "scorer": args.scorer, "poll_s": args.poll_s,
           "burst_s": args.burst, "burst": burst, "idle_min": args.idle_min, "every_s": args.every,
           "idle_polls": idle_polls, "samples": samples, "slope_mb_per_min": round(slope, 3)}
    args.out.mkdir(parents=True, exist_ok=True)
    store = args.out / "idle_rss.json"
    runs = json.loads(store.read_text()) if store.exists() else {}
    runs[args.label] = run
    store.write_text(json.dumps(runs, indent=2) + "\n")
    (args.out / "idle_rss.md").write_text(render(runs))
    print(f"wrote {store} and idle_rss.md")


if __name__ == "__main__":
    main()
