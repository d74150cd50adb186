"""Scorer benchmark: the XGBoost scorer with adaptive batching, without it (max batch size 1),
and a plain FastAPI server scoring one request at a time with the same model (one worker and
the same GC tuning as the scorers), each at 1, 16, 64 and 256 concurrent clients (wrk, one
transaction per request, 127.0.0.1 only). The three run side by side on their own ports; each
level is measured ``--rounds`` times with the servers in alternating order, and the report
gives the median and the spread (min-max).

    python bench/scorer_bench.py [--duration 8] [--rounds 3] [--out bench/results]

Writes ``scorer_bench.json`` and ``scorer_bench.md`` to ``--out``. Needs ``wrk`` (Debian).
Self-contained: trains a model into a temporary HEALMESH_HOME / BENTOML_HOME first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import fmt, one_transaction, prepare, run_order, run_wrk, spread, write_results  # noqa: E402

from healmesh.ops import procs  # noqa: E402

LEVELS = (1, 16, 64, 256)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=8, help="seconds per run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    ap.add_argument("--rows", type=int, default=40_000, help="training rows for the benchmark model")
    args = ap.parse_args()
    bench = prepare(args.rows)
    work, env, report = bench.work, bench.env, bench.report
    from healmesh.settings import get_settings

    settings = get_settings()
    import bentoml

    bundle_dir = bentoml.models.get(report.models["xgboost"].bento_tag).path  # the model the bento scorer serves

    tx = one_transaction()
    bento_body = json.dumps({"rows": [tx]})
    plain_body = json.dumps([tx])
    ports = [procs.free_port() for _ in range(3)]
    servers = {
        "bentoml_batching": (procs.bentoml_server("bench-batching", procs.SCORERS["xgboost"], ports[0],
                                                  work / "logs", env=env, cwd=ROOT), bento_body),
        "bentoml_no_batching": (procs.bentoml_server("bench-nobatch", procs.SCORERS["xgboost"], ports[1],
                                                     work / "logs", env={**env, "HEALMESH_XGB_MAX_BATCH_SIZE": "1"},
                                                     cwd=ROOT), bento_body),
        "plain_fastapi": (procs.ServerProcess(
            name="bench-fastapi", port=ports[2], log_path=work / "logs" / "fastapi.log", cwd=ROOT,
            ready_path="/docs", env={**env, "PYTHONPATH": str(ROOT)},
            cmd=[sys.executable, str(ROOT / "bench" / "plain_fastapi_server.py"), "--bundle", bundle_dir,
                 "--port", str(ports[2])]), plain_body),
    }
    runs: dict[str, dict[int, list[dict]]] = {label: {c: [] for c in LEVELS} for label in servers}
    try:
        for server, body in servers.values():
            server.start().wait_ready()
            run_wrk(server.url + "/predict", body, 16, 2, work)  # warm-up
        k = 0
        for rnd in range(args.rounds):
            for c in LEVELS:
                for label in run_order(list(servers), k):
                    server, body = servers[label]
                    r = run_wrk(server.url + "/predict", body, c, args.duration, work)
                    runs[label][c].append(r)
                    print(f"  round {rnd} {label:<20} c={c:<4} {r['rps']:>8} req/s  p50 {r['p50_ms']:>7} ms  "
                          f"p99 {r['p99_ms']:>7} ms  errors {sum(r['errors'].values())}", flush=True)
                k += 1
    finally:
        for server, _ in servers.values():
            server.stop()
    results = {label: [{"connections": c, **{key: spread(r[key] for r in rs) for key in ("rps", "p50_ms", "p99_ms")},
                        "errors": sum(sum(r["errors"].values()) for r in rs), "runs": rs}
                       for c, rs in levels.items()] for label, levels in runs.items()}
    meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": platform.platform(),
            "cpus": os.cpu_count(), "duration_s": args.duration, "rounds": args.rounds,
            "request": "one transaction per request",
            "max_batch_size": settings.xgb_max_batch_size, "max_latency_ms": settings.xgb_max_latency_ms,
            "model_threads": settings.model_threads, "workers": 1,
            "holdout_roc_auc": report.models["xgboost"].metrics["roc_auc"]}
    write_results(args.out, "scorer_bench", {"meta": meta, "results": results}, render_markdown(meta, results))
    bench.cleanup()


def render_markdown(meta: dict, results: dict[str, list[dict]]) -> str:
    lines = [f"# Scorer benchmark ({meta['date']})", "",
             f"`python bench/scorer_bench.py --duration {meta['duration_s']} --rounds {meta['rounds']}`. "
             f"{meta['machine']}, {meta['cpus']} CPUs; {meta['request']}; {meta['duration_s']} s a run, "
             f"{meta['rounds']} rounds, the servers in alternating order at each level; cells: median (min-max). "
             f"One worker process per server; batching: max_batch_size={meta['max_batch_size']}, "
             f"max_latency_ms={meta['max_latency_ms']}; model threads {meta['model_threads']}.", "",
             "| server | clients | req/s | p50 ms | p99 ms | errors (all rounds) |", "|---|---:|---:|---:|---:|---:|"]
    for label, rows in results.items():
        for r in rows:
            lines.append(f"| {label} | {r['connections']} | {fmt(r['rps'])} | {fmt(r['p50_ms'], 2)} | "
                         f"{fmt(r['p99_ms'], 2)} | {r['errors']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
