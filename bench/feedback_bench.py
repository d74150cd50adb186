"""Labels per second through ``POST /api/v1/feedback/batch`` (issue 12, item 3; goal >= 20,000/s),
127.0.0.1 only, bounded.

    python bench/feedback_bench.py [--labels 100000] [--rounds 3] [--out bench/results]

Self-contained: a temporary home, its own Redis, the three scorers on their built-in models and a
gateway. Predictions first (their request ids are what labels join), then per round and client
count, fresh ids labelled in batches of 1,000; the client counts alternate within each round
(1, 4, 1, 4, ...), and the report gives the median and the spread (min to max) over the rounds.
Writes ``feedback_bench.json`` and ``feedback_bench.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import prepare, start_mesh, write_results  # noqa: E402

from healmesh import schema  # noqa: E402
from healmesh.data import generate  # noqa: E402
from healmesh.ops import procs  # noqa: E402
from healmesh.urls import local_redis_url  # noqa: E402

TOKEN = "bench-admin-token-0123"
LABELLER_TOKEN = "bench-labeller-token-0123"
BATCH = 1_000
CLIENTS = (1, 4)


async def _predict(url: str, n: int, seed: int) -> list[str]:
    """``n`` transactions through the gateway in requests of 100 rows; their request ids."""
    import httpx

    frame = generate(n, seed=seed)[list(schema.active().feature_names)]
    rows = [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in frame.to_dict("records")]
    ids: list[str] = []
    async with httpx.AsyncClient(timeout=30) as client:
        for start in range(0, n, 100):
            r = await client.post(f"{url}/api/v1/predict", json=rows[start:start + 100])
            r.raise_for_status()
            ids += [a["request_id"] for a in r.json()]
    return ids


async def _label(url: str, ids: list[str], clients: int) -> tuple[float, dict[str, int]]:
    """All of ``ids`` labelled in batches of 1,000 by ``clients`` concurrent clients: (seconds, counts)."""
    import httpx

    batches = [[{"request_id": i, "label": k % 2} for k, i in enumerate(ids[s:s + BATCH])]
               for s in range(0, len(ids), BATCH)]
    counts = {"stored": 0, "unchanged": 0, "other": 0}
    headers = {"Authorization": f"Bearer {LABELLER_TOKEN}"}
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=clients)) as client:
        queue = list(batches)

        async def worker() -> None:
            while queue:
                body = queue.pop()
                r = await client.post(f"{url}/api/v1/feedback/batch", json=body, headers=headers)
                r.raise_for_status()
                out = r.json()
                counts["stored"] += out["stored"]
                counts["unchanged"] += out["unchanged"]
                counts["other"] += len(out["unknown"]) + len(out["conflicts"]) + len(out["expired"])

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return time.perf_counter() - t0, counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labels", type=int, default=100_000, help="labels per run (20,000 took 0.5 s: too short to read)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    bench = prepare(20_000)
    work = bench.work
    redis_srv = procs.redis_server(procs.free_port(), work / "redis", work / "logs").launch(timeout=20)
    env = {**bench.env, "HEALMESH_ADMIN_TOKEN": TOKEN, "HEALMESH_LABELLER_TOKEN": LABELLER_TOKEN,
           "HEALMESH_REDIS_URL": local_redis_url(redis_srv.port)}
    mesh = start_mesh(work, env)
    gw = mesh.gateway
    runs: dict[int, list[dict[str, Any]]] = {c: [] for c in CLIENTS}
    try:
        need = args.labels * args.rounds * len(CLIENTS)
        t0 = time.perf_counter()
        ids = asyncio.run(_predict(gw.url, need, seed=11))
        print(f"{len(ids)} predictions in {time.perf_counter() - t0:.1f}s", flush=True)
        for rnd in range(args.rounds):
            for clients in CLIENTS:  # alternated within each round
                take, ids = ids[:args.labels], ids[args.labels:]
                seconds, counts = asyncio.run(_label(gw.url, take, clients))
                rate = len(take) / seconds
                runs[clients].append({"round": rnd, "labels": len(take), "seconds": round(seconds, 3),
                                      "labels_per_s": round(rate), **counts})
                print(f"round {rnd}, {clients} client(s): {len(take)} labels in {seconds:.2f}s = {rate:,.0f}/s "
                      f"({counts})", flush=True)
    finally:
        mesh.stop()
        redis_srv.stop()
    meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": platform.platform(),
            "cpus": os.cpu_count(), "batch": BATCH, "labels_per_run": args.labels, "rounds": args.rounds}
    summary = {c: {"median_labels_per_s": round(statistics.median(r["labels_per_s"] for r in rs)),
                   "min": min(r["labels_per_s"] for r in rs), "max": max(r["labels_per_s"] for r in rs),
                   "all_stored": all(r["stored"] == r["labels"] for r in rs)} for c, rs in runs.items()}
    lines = [f"# /feedback/batch throughput ({meta['date']})", "",
             f"`python bench/feedback_bench.py`: {meta['machine']}, {meta['cpus']} CPUs; one gateway (its default "
             f"workers) and its own Redis on 127.0.0.1; batches of {BATCH:,} labels of fresh request ids, "
             f"{args.labels:,} labels a run, {args.rounds} rounds with the client counts alternated. Goal (issue 12): "
             ">= 20,000 labels/s.", "",
             "| clients | median labels/s | spread (min - max) | every label stored |", "|---:|---:|---|---|"]
    lines += [f"| {c} | {s['median_labels_per_s']:,} | {s['min']:,} - {s['max']:,} | {s['all_stored']} |"
              for c, s in summary.items()]
    write_results(args.out, "feedback_bench", {"meta": meta, "summary": summary, "runs": runs}, "\n".join(lines) + "\n")
    bench.cleanup()


if __name__ == "__main__":
    main()
