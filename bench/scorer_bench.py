"""Scorer benchmark: the XGBoost scorer with adaptive batching, without it (max batch size 1),
and a plain FastAPI server scoring one request at a time with the same model, each at
1, 16, 64 and 256 concurrent clients (wrk, one transaction per request, 127.0.0.1 only).

    python bench/scorer_bench.py [--duration 10] [--out bench/results]

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

from common import one_transaction, prepare, run_wrk, write_results  # noqa: E402

from healmesh.ops import procs  # noqa: E402

LEVELS = (1, 16, 64, 256)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=10, help="seconds per concurrency level")
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
    port = procs.free_port()
    servers = {
        "bentoml_batching": (procs.bentoml_server("bench-batching", procs.SCORERS["xgboost"], port, work / "logs",
                                                  env=env, cwd=ROOT), bento_body),
        "bentoml_no_batching": (procs.bentoml_server("bench-nobatch", procs.SCORERS["xgboost"], port, work / "logs",
                                                     env={**env, "HEALMESH_XGB_MAX_BATCH_SIZE": "1"}, cwd=ROOT),
                                bento_body),
        "plain_fastapi": (procs.ServerProcess(
            name="bench-fastapi", port=port, log_path=work / "logs" / "fastapi.log", cwd=ROOT,
            ready_path="/docs", env={**env, "PYTHONPATH": str(ROOT)},
            cmd=[sys.executable, str(ROOT / "bench" / "plain_fastapi_server.py"), "--bundle", bundle_dir,
                 "--port", str(port)]), plain_body),
    }
    results: dict[str, list[dict]] = {}
    for label, (server, body) in servers.items():
        print(f"== {label}", flush=True)
        server.start().wait_ready()
        try:
            run_wrk(server.url + "/predict", body, 16, 2, work)  # warm-up
            results[label] = []
            for c in LEVELS:
                r = run_wrk(server.url + "/predict", body, c, args.duration, work)
                results[label].append(r)
                print(f"  c={c:<4} {r['rps']:>8} req/s  p50 {r['p50_ms']:>7} ms  p95 {r['p95_ms']:>7} ms  "
                      f"p99 {r['p99_ms']:>7} ms  errors {sum(r['errors'].values())}", flush=True)
        finally:
            server.stop()

    meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": platform.platform(),
            "cpus": os.cpu_count(), "duration_s": args.duration, "request": "one transaction per request",
            "max_batch_size": settings.xgb_max_batch_size, "max_latency_ms": settings.xgb_max_latency_ms,
            "model_threads": settings.model_threads, "workers": 1,
            "holdout_roc_auc": report.models["xgboost"].metrics["roc_auc"]}
    write_results(args.out, "scorer_bench", {"meta": meta, "results": results}, render_markdown(meta, results))
    bench.cleanup()


def render_markdown(meta: dict, results: dict[str, list[dict]]) -> str:
    lines = [f"# Scorer benchmark ({meta['date']})", "",
             f"{meta['machine']}, {meta['cpus']} CPUs; {meta['request']}; {meta['duration_s']} s per level; "
             f"one worker process per server; batching: max_batch_size={meta['max_batch_size']}, "
             f"max_latency_ms={meta['max_latency_ms']}; model threads {meta['model_threads']}.", "",
             "| server | clients | req/s | p50 ms | p95 ms | p99 ms | errors |", "|---|---:|---:|---:|---:|---:|---:|"]
    for label, rows in results.items():
        for r in rows:
            lines.append(f"| {label} | {r['connections']} | {r['rps']} | {r['p50_ms']} | {r['p95_ms']} | "
                         f"{r['p99_ms']} | {sum(r['errors'].values())} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
