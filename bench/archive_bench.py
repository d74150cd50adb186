"""The durable feature log: archive throughput and bytes on the store per million requests.

`python bench/archive_bench.py` -> bench/results/archive_bench.{json,md}

A private redis-server holds a feature stream of 200,000 entries shaped like the gateway's
(16 features of generated transactions and the answer, written as the gateway's FeatureLog
writes them) and a feedback stream with a label for every tenth request. The archiver
(``healmesh.lifecycle.archive.Archiver``, the code `healmesh archive run` runs) copies both to a
fresh store: a local folder, and an S3-compatible bucket on a moto server on 127.0.0.1. Two
part sizes: 50,000 rows (the default batch, a backlog) and 5,000 rows (what a 30 s loop writes
at about 170 requests per second, so more, smaller parts). Each (store, part size) runs 3 times,
in alternating order; medians with their spread. Throughput counts rows of both streams per
second, from reading Redis to the last atomic put; size is what the store holds, extrapolated
to 1,000,000 logged requests (with their 100,000 labels).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import fmt, run_order, spread, write_results  # noqa: E402
from bench.feature_log_bench import shapes  # noqa: E402
from healmesh.control import keys  # noqa: E402
from healmesh.data.objects import LocalObjectStore, ObjectStore, open_store  # noqa: E402
from healmesh.lifecycle.archive import Archiver  # noqa: E402
from healmesh.ops import procs  # noqa: E402

ROWS = 200_000
LABEL_EVERY = 10
RUNS = 3
PART_ROWS = (50_000, 5_000)
STORES = ("local", "s3")
PREFIX = "bench"
CREDS = {"access_key_id": "bench-key", "secret_access_key": "bench-secret"}


def fill(r: Any) -> None:
    payloads = shapes(2_000)
    pipe = r.pipeline(transaction=False)
    now = time.time()
    for i in range(ROWS):
        rid = keys.new_request_id(now + i / 1_000)
        data = dict(payloads[i % len(payloads)], probability=round((i * 7919 % 10_000) / 10_000, 4))
        pipe.xadd(keys.stream(PREFIX), {"request_id": rid, "kind": "primary", "ts": f"{now + i / 1_000:.3f}",
                                        "data": json.dumps(data)})
        if i % LABEL_EVERY == 0:
            pipe.xadd(keys.feedback_stream(PREFIX), {"request_id": rid, "label": str(int(i % 70 == 0)),
                                                     "ts": f"{now + i / 1_000:.3f}"})
        if i % 5_000 == 4_999:
            pipe.execute()
    pipe.execute()


def start_moto(work: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = procs.free_port()
    with open(work / "moto.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(url + "/moto-api/", timeout=1)
            return proc, url
        except httpx.TransportError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.terminate()
                raise RuntimeError("moto's server did not start") from None
            time.sleep(0.2)


def fresh_store(kind: str, work: Path, moto: str) -> tuple[ObjectStore, Any]:
    if kind == "local":
        root = work / f"archive-{uuid.uuid4().hex[:8]}"
        return LocalObjectStore(root), root
    import boto3

    client = boto3.client("s3", endpoint_url=moto, region_name="us-east-1",
                          aws_access_key_id=CREDS["access_key_id"], aws_secret_access_key=CREDS["secret_access_key"])
    bucket = f"bench-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=bucket)
    return open_store(f"s3://{bucket}/archive", endpoint_url=moto, **CREDS), (client, bucket)


def stored_bytes(kind: str, where: Any) -> tuple[int, int]:
    if kind == "local":
        files = [p for p in Path(where).rglob("*") if p.is_file()]
        return sum(p.stat().st_size for p in files), len(files)
    client, bucket = where
    total = count = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", ()):
            total += obj["Size"]
            count += 1
    return total, count


def one_run(r: Any, kind: str, part_rows: int, work: Path, moto: str) -> dict[str, Any]:
    load = os.getloadavg()[0]  # this machine is shared: how busy it was when the run started
    store, where = fresh_store(kind, work, moto)
    r.delete(keys.archive_lease(PREFIX))
    archiver = Archiver(r, PREFIX, store, batch_rows=part_rows, retention_s=30 * 86_400, lease_ttl_s=300)
    t0 = time.perf_counter()
    run = archiver.run_once()
    seconds = time.perf_counter() - t0
    rows = sum(s.rows for s in run.streams)
    size, objects = stored_bytes(kind, where)
    if kind == "local":
        shutil.rmtree(where, ignore_errors=True)
    return {"store": kind, "part_rows": part_rows, "rows": rows, "seconds": round(seconds, 3),
            "rows_per_s": rows / seconds, "bytes": size, "objects": objects,
            "bytes_per_million_requests": size * 1_000_000 / ROWS, "load_1m": round(load, 1)}


def main() -> None:
    import redis

    work = Path(tempfile.mkdtemp(prefix="healmesh-archbench-"))
    server = procs.redis_server(procs.free_port(), work / "redis", work / "logs").launch(20)
    moto, moto_url = start_moto(work)
    runs: list[dict[str, Any]] = []
    redis_bytes = 0
    try:
        r = redis.Redis(port=server.port)
        print(f"filling the streams: {ROWS:,} requests, {ROWS // LABEL_EVERY:,} labels ...", flush=True)
        fill(r)
        redis_bytes = sum(int(r.memory_usage(k, samples=0) or 0)
                          for k in (keys.stream(PREFIX), keys.feedback_stream(PREFIX)))
        for k in range(RUNS):
            for part_rows in PART_ROWS:
                for kind in run_order(STORES, k):
                    res = one_run(r, kind, part_rows, work, moto_url)
                    print(f"run {k + 1}: {kind} parts of {part_rows:,}: {res['rows_per_s']:,.0f} rows/s, "
                          f"{res['bytes'] / 2**20:.1f} MiB in {res['objects']} objects, load {res['load_1m']}",
                          flush=True)
                    runs.append(res)
    finally:
        moto.terminate()
        moto.wait(timeout=10)
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    summary = []
    for part_rows in PART_ROWS:
        for kind in STORES:
            mine = [x for x in runs if x["store"] == kind and x["part_rows"] == part_rows]
            summary.append({"store": kind, "part_rows": part_rows,
                            "rows_per_s": spread(x["rows_per_s"] for x in mine),
                            "mb_per_million": spread(x["bytes_per_million_requests"] / 1e6 for x in mine),
                            "objects": mine[0]["objects"], "rows": mine[0]["rows"],
                            "load_1m": spread(x["load_1m"] for x in mine)})
    table = "\n".join(
        f"| {s['store']} | {s['part_rows']:,} | {s['objects']} | {fmt(s['rows_per_s'], 0)} | "
        f"{fmt(s['mb_per_million'], 1)} | {fmt(s['load_1m'], 1)} |" for s in summary)
    md = f"""# Archive: throughput and size

`python bench/archive_bench.py` (a private redis-server; {ROWS:,} feature-log entries shaped like the
gateway's, 16 features and the answer, and {ROWS // LABEL_EVERY:,} labels; the archiver of
`healmesh archive run`; a fresh store per run: a local folder, or a bucket on a moto S3 server on
127.0.0.1; {RUNS} runs per row in alternating order; median (min-max)).

Rows per second count both streams ({ROWS + ROWS // LABEL_EVERY:,} rows a run), from reading Redis to
the last atomic put. Size is the bytes the store holds (Parquet, zstd), extrapolated to 1,000,000
logged requests with 100,000 labels.

| store | rows per part | objects | rows/s | MB per 1M requests | load average (1 min) at start |
|---|---|---|---|---|---|
{table}

For comparison, the same two streams take {redis_bytes * 1e6 / ROWS / 1e6:,.0f} MB per million requests in
Redis (`MEMORY USAGE` of both keys, the stream entries alone, without the minute hashes), where they
stay only `HEALMESH_LABEL_RETENTION_S`; the archive keeps them `HEALMESH_ARCHIVE__RETENTION_S` (30 days
by default). Smaller parts (a loop at low traffic) cost
more objects and Parquet footers per row.

The machine has 2 cores shared with other engineers' builds and tests: the load average column
says how busy it was, and throughput follows it (the spread is the load's, not the store's).
The archiver must copy faster than traffic arrives, on average over `HEALMESH_LABEL_RETENTION_S`
(1 h): a run every `HEALMESH_ARCHIVE__INTERVAL_S` (30 s) carries what arrived since, and a backlog
is caught up in batches of `HEALMESH_ARCHIVE__BATCH_ROWS`. Its cost per row is reading Redis
(XRANGE), decoding the entries in Python and encoding Parquet; at the rates above one archiver
process keeps up with a gateway answering about as many requests per second, so a busier mesh
needs the archiver on a CPU of its own (its Deployment in deploy/k8s) before the hot window is
shortened.
"""
    write_results(ROOT / "bench" / "results", "archive_bench",
                  {"rows": ROWS, "labels": ROWS // LABEL_EVERY, "redis_stream_bytes": redis_bytes,
                   "redis_mb_per_million": round(redis_bytes / ROWS, 1), "runs": runs, "summary": summary}, md)


if __name__ == "__main__":
    main()
