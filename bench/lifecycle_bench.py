"""Lifecycle timings (127.0.0.1 only, bounded): a drift check on a 10,000-record window and a
retraining on 50,000 labelled records, both read back from the feature log of a real mesh.

    python bench/lifecycle_bench.py [--records 50000] [--out bench/results]

Self-contained: a temporary home with a local MLflow store, its own Redis, scorers and gateway.
Writes ``lifecycle_bench.json`` and ``lifecycle_bench.md``. (The whole loop through Airflow is
`healmesh demo drift` on a running `make up`; it prints its wall time.)
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import prepare, start_mesh, write_results  # noqa: E402

from healmesh.data import DriftSpec, generate  # noqa: E402
from healmesh.ops import procs  # noqa: E402
from healmesh.urls import local_redis_url  # noqa: E402

TOKEN = "bench-admin-token-0123"
LABELLER_TOKEN = "bench-labeller-token-0123"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=50_000)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    bench = prepare(20_000)  # a built-in model; the registered champion comes next
    from healmesh.lifecycle import monitor, retrain, traffic
    from healmesh.settings import get_settings
    from healmesh.training import TrainConfig, train

    work = bench.work
    redis_srv = procs.redis_server(procs.free_port(), work / "redis", work / "logs").launch(timeout=20)
    os.environ.update({"HEALMESH_REDIS_URL": local_redis_url(redis_srv.port),
                       "HEALMESH_ADMIN_TOKEN": TOKEN, "HEALMESH_LABELLER_TOKEN": LABELLER_TOKEN,
                       "HEALMESH_DRIFT_REPORTS_DIR": str(work / "drift_reports")})
    os.environ.pop("HEALMESH_MLFLOW_TRACKING_URI", None)
    get_settings.cache_clear()
    settings = get_settings()
    train(generate(60_000, seed=0), settings, TrainConfig(mlp_epochs=3, save_to_bentoml=False))
    env = {**bench.env, "HEALMESH_ADMIN_TOKEN": TOKEN, "HEALMESH_LABELLER_TOKEN": LABELLER_TOKEN,
           "HEALMESH_REDIS_URL": settings.redis_url}
    env.pop("HEALMESH_MLFLOW_TRACKING_URI", None)
    mesh = start_mesh(work, env)
    gw = mesh.gateway
    try:
        from healmesh import redis_conn

        r = redis_conn.sync_client(settings)
        drift = DriftSpec(covariate_shift={"amount": 1.2, "distance_from_home_km": 1.0, "channel": 0.4})
        t0 = time.perf_counter()
        sent = traffic.send_sync(gw.url, args.records, seed=9, drift=drift, batch=100)
        fill_s = time.perf_counter() - t0
        print(f"{sent.answered} transactions and {sent.labelled} labels through the gateway in {fill_s:.1f}s")
        t0 = time.perf_counter()
        check = monitor.run_drift_check(settings, r, window_records=10_000)
        drift_s = time.perf_counter() - t0
        print(f"drift check on {check['window_size']} records: {drift_s:.2f}s, decision {check['decision']}")
        t0 = time.perf_counter()
        result = retrain.run_retrain(settings, r, trigger="bench", drift_check_id=check["check_id"],
                                     window_records=args.records)
        retrain_s = time.perf_counter() - t0
        print(f"retrain on {result['recent_labelled_rows']} labelled records: {retrain_s:.2f}s "
              f"(fit {result['train_seconds']}s), gate passed {result['passed']}")
    finally:
        mesh.stop()
        redis_srv.stop()
    meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": platform.platform(),
            "cpus": os.cpu_count()}
    payload = {"meta": meta, "results": {
        "traffic": {"records": sent.answered, "labels": sent.labelled, "seconds": round(fill_s, 2)},
        "drift_check": {"window": check["window_size"], "seconds": round(drift_s, 2), "decision": check["decision"],
                        "drifted": check["drifted_features"]},
        "retrain": {"labelled_records": result["recent_labelled_rows"], "train_rows": result["train_rows"],
                    "seconds": round(retrain_s, 2), "fit_and_score_seconds": result["train_seconds"],
                    "candidate_auc": round(result["candidate"]["roc_auc"], 4),
                    "champion_auc": round(result["champion"]["roc_auc"], 4), "gate_passed": result["passed"]}}}
    res = payload["results"]
    md = "\n".join([
        f"# Lifecycle benchmark ({meta['date']})", "", f"{meta['machine']}, {meta['cpus']} CPUs.", "",
        "| step | records | seconds |", "|---|---:|---:|",
        f"| drift check (stats + Evidently report + index) | {res['drift_check']['window']} | "
        f"{res['drift_check']['seconds']} |",
        f"| retrain (read, join labels, fit, score, log, register) | {res['retrain']['labelled_records']} | "
        f"{res['retrain']['seconds']} |",
        "", f"Candidate ROC AUC {res['retrain']['candidate_auc']} against champion {res['retrain']['champion_auc']} "
            f"on the same recent holdout; gate passed: {res['retrain']['gate_passed']}.", ""])
    write_results(args.out, "lifecycle_bench", payload, md)
    bench.cleanup()


if __name__ == "__main__":
    main()
