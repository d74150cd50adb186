"""Where a gateway worker spends its CPU under load (issue 12, item 2): py-spy samples every
gateway worker while wrk drives the fast route, then the samples are summed by function (self
time, and inclusive time of the layers a request passes). 127.0.0.1 only, bounded in time.

    python bench/profile_gateway.py [--clients 64,256] [--duration 15] [--out bench/results]

Needs py-spy (``pip install py-spy``; it reads the workers' memory: run as root or with
ptrace allowed). Writes ``gateway_profile.md`` and ``gateway_profile.json``.
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import one_transaction, prepare, run_wrk, start_mesh, write_results  # noqa: E402

from healmesh.ops import procs  # noqa: E402
from healmesh.urls import local_redis_url  # noqa: E402

# the layers a request passes, by a fragment of the frame's file or function
LAYERS = {
    "uvicorn / httptools (HTTP parsing, transport)": ("uvicorn/",),
    "BentoML traffic metrics middleware": ("instruments.py",),
    "BentoML timeout middleware": ("traffic.py",),
    "OpenTelemetry middleware": ("opentelemetry",),
    "access guard (credential, body size)": ("healmesh/access.py",),
    "fast path (read, parse, validate, answer)": ("healmesh/gateway/api.py",),
    "gateway core (chain, limits, log, shadow)": ("healmesh/gateway/core.py",),
    "upstream calls (aiohttp client)": ("aiohttp/",),
    "feature log (Redis writes)": ("healmesh/gateway/feature_log.py",),
    "prometheus_client (our metrics)": ("prometheus_client/",),
    "pydantic validation": ("pydantic",),
    "json": ("json/",),
    "asyncio event loop": ("asyncio/",),
}


def gateway_workers(server: Any) -> list[int]:
    return [p.pid for p in procs.process_tree(server.popen.pid)[1:]
            if "_bentoml_impl.worker.service" in " ".join(p.cmdline())]


def record(pids: list[int], seconds: int, work: Path) -> list[Path]:
    outs, spies = [], []
    for pid in pids:
        out = work / f"pyspy-{pid}.txt"
        spies.append(subprocess.Popen(["py-spy", "record", "--pid", str(pid), "--duration", str(seconds),
                                       "--rate", "200", "--format", "raw", "--output", str(out), "--nonblocking"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        outs.append(out)
    for spy in spies:
        spy.wait(timeout=seconds + 60)
    return [o for o in outs if o.exists()]


def summarise(files: list[Path]) -> dict[str, Any]:
    """Collapsed stacks (``frame;frame;... count``) -> shares of the samples."""
    self_time: collections.Counter[str] = collections.Counter()
    layers: collections.Counter[str] = collections.Counter()
    total = idle = 0
    for f in files:
        for line in f.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack:
                continue
            n = int(count)
            frames = stack.split(";")
            total += n
            leaf = frames[-1]
            if "select" in leaf or "epoll" in leaf or "_run_once" in leaf and len(frames) < 8:
                idle += n
            self_time[leaf] += n
            for layer, marks in LAYERS.items():
                if any(m in fr for fr in frames for m in marks):
                    layers[layer] += n
    share = (lambda n: round(100.0 * n / total, 1)) if total else (lambda n: 0.0)
    return {"samples": total, "idle_share_pct": share(idle),
            "layers_inclusive_pct": {k: share(v) for k, v in layers.most_common()},
            "top_self_pct": [(k, share(v)) for k, v in self_time.most_common(25)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", default="64,256")
    ap.add_argument("--duration", type=int, default=15)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--gateway-env", action="append", default=[], help="KEY=VALUE for the gateway")
    args = ap.parse_args()
    if not shutil.which("py-spy"):
        raise SystemExit("py-spy not found: pip install py-spy")
    bench = prepare(20_000)
    redis_srv = procs.redis_server(procs.free_port(), bench.work / "redis", bench.work / "logs").launch(timeout=20)
    mesh = None
    results: dict[str, Any] = {}
    try:
        env = {**bench.env, "HEALMESH_REDIS_URL": local_redis_url(redis_srv.port)}
        mesh = start_mesh(bench.work, env, dict(kv.split("=", 1) for kv in args.gateway_env))
        url, body = mesh.gateway.url + "/api/v1/predict", json.dumps(one_transaction())
        run_wrk(url, body, 16, 3, bench.work)  # warm-up
        for clients in (int(c) for c in args.clients.split(",")):
            pids = gateway_workers(mesh.gateway)
            got: dict[str, Any] = {}
            load = threading.Thread(target=lambda c=clients, g=got: g.update(
                run_wrk(url, body, c, args.duration + 2, bench.work, timeout="2s", statuses=True)))
            load.start()
            time.sleep(1)
            files = record(pids, args.duration, bench.work)
            load.join()
            results[str(clients)] = {"wrk": got, "workers": len(pids), **summarise(files)}
            print(json.dumps({clients: results[str(clients)]["layers_inclusive_pct"]}, indent=1), flush=True)
    finally:
        if mesh is not None:
            mesh.stop()
        redis_srv.stop()
        bench.cleanup()
    lines = ["# Where the gateway's CPU goes under load (py-spy)", "",
             f"`python bench/profile_gateway.py --clients {args.clients} --duration {args.duration}`, "
             f"{time.strftime('%Y-%m-%d')}: py-spy at 200 Hz on every gateway worker while wrk drives "
             "`POST /api/v1/predict`. Inclusive: share of the samples with that layer anywhere on the stack.", ""]
    for clients, r in results.items():
        w = r["wrk"]
        lines += [f"## {clients} clients ({r['workers']} workers, {r['samples']} samples; wrk {w.get('rps')} req/s, "
                  f"statuses {w.get('statuses')})", "", "| layer | inclusive % |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in r["layers_inclusive_pct"].items()]
        lines += ["", "| function (self) | % |", "|---|---:|"]
        lines += [f"| `{k[:110]}` | {v} |" for k, v in r["top_self_pct"]]
        lines.append("")
    write_results(args.out, "gateway_profile", {"results": results}, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
