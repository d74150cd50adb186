"""Gateway benchmarks (127.0.0.1 only, bounded in time):

- overhead: 64 concurrent clients straight to the XGBoost scorer and through the gateway
  (default 80/20 routing), alternated over ``--rounds`` rounds (wrk: req/s, p50/p95/p99,
  errors; median and spread). The comparison with a one-hop server doing the mesh's work (both
  models, 80/20) is ``bench/overload_bench.py``;
- chaos: 60 s of steady load through the gateway; the XGBoost scorer is killed at 20 s and
  started again at 40 s: client errors, seconds until its breaker opened, seconds from the
  restart until it carries its full share again.

    python bench/gateway_bench.py [--run overhead|chaos|all] [--duration 15] [--rounds 3] [--out bench/results]

Writes ``gateway_bench.json`` and ``gateway_bench.md``. Self-contained: trains a model into a
temporary home, starts its own Redis, scorers and gateway, and stops them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import fmt, one_transaction, prepare, run_order, run_wrk, spread, write_results  # noqa: E402

from healmesh import schema  # noqa: E402
from healmesh.data import generate  # noqa: E402
from healmesh.ops import procs  # noqa: E402
from healmesh.settings import get_settings  # noqa: E402
from healmesh.urls import local_redis_url  # noqa: E402

TOKEN = "bench-admin-token-0123"


class Mesh:
    """Redis, three scorers and a gateway on free ports."""

    def __init__(self, work: Path, env: dict[str, str]) -> None:
        self.work, self.env = work, {**env, "HEALMESH_ADMIN_TOKEN": TOKEN}
        self.redis = procs.redis_server(procs.free_port(), work / "redis", work / "logs")
        self.scorers = {name: procs.bentoml_server(f"bench-{name}", target, procs.free_port(), work / "logs",
                                                   env=self.env, cwd=ROOT)
                        for name, target in procs.SCORERS.items()}
        urls = {"HEALMESH_XGB_URL": self.scorers["xgboost"].url, "HEALMESH_TORCH_URL": self.scorers["pytorch"].url,
                "HEALMESH_FALLBACK_URL": self.scorers["fallback"].url,
                "HEALMESH_REDIS_URL": local_redis_url(self.redis.port)}
        self.gateway = procs.bentoml_server("bench-gateway", "gateway.service:Gateway", procs.free_port(),
                                            work / "logs", env={**self.env, **urls}, cwd=ROOT)

    def __enter__(self) -> Mesh:
        self.redis.launch(timeout=20)
        for s in self.scorers.values():
            s.start()
        for s in self.scorers.values():
            s.wait_ready(timeout=120)
        self.gateway.start().wait_ready(timeout=120)
        return self

    def __exit__(self, *exc: object) -> None:
        for s in [self.gateway, *self.scorers.values(), self.redis]:
            s.stop()

    def state(self) -> dict[str, Any]:
        return httpx.get(self.gateway.url + "/api/v1/admin/state", headers={"Authorization": f"Bearer {TOKEN}"},
                         timeout=5).json()


def overhead(mesh: Mesh, duration: int, rounds: int, work: Path) -> dict[str, Any]:
    tx = one_transaction()  # no card id: routed by the weights, not stuck to one variant
    run_wrk(mesh.gateway.url + "/api/v1/predict", json.dumps(tx), 16, 3, work)  # warm-up
    targets = {"direct_xgboost_scorer": (mesh.scorers["xgboost"].url + "/predict", json.dumps({"rows": [tx]})),
               "through_gateway": (mesh.gateway.url + "/api/v1/predict", json.dumps(tx))}
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in targets}
    for k in range(rounds):
        for label in run_order(list(targets), k):
            url, body = targets[label]
            runs[label].append(run_wrk(url, body, 64, duration, work))
    ratios = [g["rps"] / d["rps"] for g, d in zip(runs["through_gateway"], runs["direct_xgboost_scorer"], strict=True)]
    out: dict[str, Any] = {label: {**{key: spread(r[key] for r in rs) for key in ("rps", "p50_ms", "p95_ms", "p99_ms")},
                                   "errors": sum(sum(r["errors"].values()) for r in rs), "runs": rs}
                           for label, rs in runs.items()}
    return {**out, "gateway_share_of_direct_rps": spread(ratios), "rounds": rounds, "duration_s": duration}


def chaos(mesh: Mesh, concurrency: int = 16, total_s: float = 60.0, kill_at: float = 20.0,
          restart_at: float = 40.0) -> dict[str, Any]:
    rows = generate(5_000, seed=3)[list(schema.active().feature_names)].to_dict("records")
    bodies = [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in rows]
    url = mesh.gateway.url + "/api/v1/predict"
    replies: list[tuple[float, int, str]] = []  # (time since start, status, variant)
    marks: dict[str, float] = {}
    weights: list[tuple[float, float, str]] = []  # (t, effective xgboost_stable weight, breaker state)
    t0 = time.monotonic()

    async def load() -> None:
        async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=concurrency)) as client:
            async def worker(k: int) -> None:
                i = k
                while time.monotonic() - t0 < total_s:
                    try:
                        r = await client.post(url, json=bodies[i % len(bodies)])
                        variant = r.json().get("variant", "") if r.status_code == 200 else ""
                        replies.append((time.monotonic() - t0, r.status_code, variant))
                    except httpx.HTTPError:
                        replies.append((time.monotonic() - t0, 0, ""))
                    i += concurrency
            await asyncio.gather(*(worker(k) for k in range(concurrency)))

    def control() -> None:
        xgb = mesh.scorers["xgboost"]
        while time.monotonic() - t0 < total_s:
            t = time.monotonic() - t0
            try:
                st = mesh.state()
                weights.append((t, st["effective_weights"]["xgboost_stable"],
                                st["breakers"]["xgboost_stable"]["state"]))
            except httpx.HTTPError:
                pass
            if "killed" not in marks and t >= kill_at:
                xgb.stop(timeout=0.1)  # SIGTERM then SIGKILL to its whole process group
                marks["killed"] = time.monotonic() - t0
            if "restarted" not in marks and t >= restart_at:
                xgb.start()
                marks["restarted"] = time.monotonic() - t0
                threading.Thread(target=lambda: (xgb.wait_ready(timeout=60),
                                                 marks.setdefault("ready", time.monotonic() - t0)),
                                 daemon=True).start()
            time.sleep(0.1)

    ctl = threading.Thread(target=control)
    ctl.start()
    asyncio.run(load())
    ctl.join()

    state = mesh.state()
    opened = [tr for tr in state["transitions"] if tr["upstream"] == "xgboost_stable" and tr["to"] == "open"]
    opened_t = next((t for t, _, s in weights if s == "open" and t >= marks["killed"]), None)
    full_t = next((t for t, w, s in weights if t > marks["restarted"] and s == "closed" and abs(w - 0.8) < 1e-6
                   and all(abs(w2 - 0.8) < 1e-6 for t2, w2, _ in weights if t <= t2 <= t + 2.0)), None)
    errors = sum(1 for _, status, _ in replies if status != 200)
    buckets: dict[int, Counter[str]] = {}
    for t, status, variant in replies:
        if status == 200:
            buckets.setdefault(int(t // 5) * 5, Counter())[variant] += 1
    timeline = {f"{k}-{k + 5}s": {v: round(c / sum(cnt.values()), 3) for v, c in sorted(cnt.items())}
                for k, cnt in sorted(buckets.items())}
    return {
        "requests": len(replies), "client_errors": errors, "concurrency": concurrency,
        "killed_at_s": round(marks["killed"], 2), "restarted_at_s": round(marks["restarted"], 2),
        "scorer_ready_at_s": round(marks["ready"], 2) if "ready" in marks else None,
        "seconds_until_breaker_open": round(opened_t - marks["killed"], 2) if opened_t is not None else None,
        "breaker_open_reason": opened[0]["reason"] if opened else None,
        "seconds_from_restart_to_full_share": round(full_t - marks["restarted"], 2) if full_t is not None else None,
        "seconds_from_ready_to_full_share": (round(full_t - marks["ready"], 2)
                                             if full_t is not None and "ready" in marks else None),
        "share_by_5s": timeline,
    }


def render(meta: dict[str, Any], results: dict[str, Any]) -> str:
    workers = meta.get("gateway_workers", 1)  # results before the setting was recorded: one worker
    lines = [f"# Gateway benchmark ({meta['date']})", "",
             f"{meta['machine']}, {meta['cpus']} CPUs, {workers} gateway worker{'s' if workers != 1 else ''}.", ""]
    if "overhead" in results:
        o = results["overhead"]
        lines += [f"## Overhead: 64 clients, wrk, one transaction per request ({o['rounds']} rounds of "
                  f"{o['duration_s']} s, alternated; median (min-max))", "",
                  "| path | req/s | p50 ms | p95 ms | p99 ms | errors |", "|---|---:|---:|---:|---:|---:|"]
        for label in ("direct_xgboost_scorer", "through_gateway"):
            r = o[label]
            lines.append(f"| {label} | {fmt(r['rps'])} | {fmt(r['p50_ms'], 2)} | {fmt(r['p95_ms'], 2)} | "
                         f"{fmt(r['p99_ms'], 2)} | {r['errors']} |")
        lines += ["", f"Gateway throughput / direct: {fmt(o['gateway_share_of_direct_rps'], 2)} (per round).", ""]
    if "chaos" in results:
        c = results["chaos"]
        lines += ["## Chaos: XGBoost scorer killed at 20 s, restarted at 40 s (60 s of load)", "",
                  f"- requests: {c['requests']}, client errors: **{c['client_errors']}**",
                  f"- breaker open {c['seconds_until_breaker_open']} s after the kill ({c['breaker_open_reason']})",
                  f"- full share back {c['seconds_from_restart_to_full_share']} s after the restart "
                  f"({c['seconds_from_ready_to_full_share']} s after the scorer was ready again)",
                  "", "| window | share by variant |", "|---|---|"]
        for window, share in c["share_by_5s"].items():
            lines.append(f"| {window} | {', '.join(f'{k} {v:.0%}' for k, v in share.items())} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", choices=["overhead", "chaos", "all"], default="all")
    ap.add_argument("--duration", type=int, default=15, help="seconds per overhead measurement")
    ap.add_argument("--rounds", type=int, default=3, help="alternated rounds of the overhead comparison")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--rows", type=int, default=40_000)
    args = ap.parse_args()
    bench = prepare(args.rows)
    results: dict[str, Any] = {}
    try:
        if args.run in ("overhead", "all"):
            with Mesh(bench.work, bench.env) as mesh:
                print("== overhead", flush=True)
                results["overhead"] = overhead(mesh, args.duration, args.rounds, bench.work)
                print(json.dumps({k: v for k, v in results["overhead"].items() if k != "runs"}, indent=1,
                                 default=str), flush=True)
        if args.run in ("chaos", "all"):
            with Mesh(bench.work, bench.env) as mesh:
                print("== chaos", flush=True)
                results["chaos"] = chaos(mesh)
                print(json.dumps({k: v for k, v in results["chaos"].items() if k != "share_by_5s"}, indent=1))
    finally:
        bench.cleanup()
    meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": platform.platform(),
            "cpus": os.cpu_count(), "gateway_workers": get_settings().gateway_workers}
    write_results(args.out, "gateway_bench", {"meta": meta, "results": results}, render(meta, results))


if __name__ == "__main__":
    main()
