"""Redis memory of the feature log: bytes per logged request, and memory over 1,000,000 requests.

`python bench/feature_log_bench.py` -> bench/results/feature_log.{json,md}

A private redis-server configured as `make up` configures its own (password, 1gb maxmemory,
volatile-ttl, append-only file every second), written to by the gateway's own ``FeatureLog``
with records shaped like the gateway's (features of generated transactions and an answer):

1. bytes per request: 100,000 records with a retention longer than the run, half of them
   labelled; ``used_memory`` grown per record, without and with its label;
2. steady state: 1,000,000 records at a fixed 5,000 per second with a 10 s label retention;
   ``used_memory`` every 5 s. Once the retention (and the minute a label hash spans) has passed,
   memory should stay flat: old stream entries are trimmed by entry time (MINID) and old label
   hashes expire.

127.0.0.1 only; bounded in records and time; stops its Redis at the end.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import write_results  # noqa: E402
from healmesh import schema  # noqa: E402
from healmesh.control import keys  # noqa: E402
from healmesh.data import generate  # noqa: E402
from healmesh.gateway.feature_log import FeatureLog, LogRecord  # noqa: E402
from healmesh.ops import procs  # noqa: E402
from healmesh.urls import local_redis_url  # noqa: E402

RATE = 5_000  # records per second in the steady-state run: 200 s, two label-hash minutes past warm-up
TOTAL = 1_000_000
RETENTION_S = 10
SAMPLE_EVERY_S = 5.0


def shapes(n: int = 200) -> list[dict[str, Any]]:
    """Record payloads as the gateway writes them (features + answer), from generated traffic."""
    frame = generate(n, seed=3)
    out = []
    for row in frame[list(schema.active().feature_names) + [schema.active().entity_key]].to_dict("records"):
        key = schema.active().entity_key
        features = {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items() if k != key}
        out.append({"variant": "xgboost_stable", "model": "xgboost", "model_version": "1", "probability": 0.0123,
                    "label": 0, "fallback": False, "degraded": False, "latency_ms": 12.345,
                    "card_id": row[schema.active().entity_key], "features": features})
    return out


def used(client: Any) -> int:
    return int(client.info("memory")["used_memory"])


async def bytes_per_request(url: str, password: str, payloads: list[dict[str, Any]]) -> dict[str, Any]:
    import redis
    import redis.asyncio as aioredis

    sync = redis.Redis.from_url(url, password=password)
    client = aioredis.Redis.from_url(url, password=password)
    log = FeatureLog(client, "bpr", retention_s=3_600, maxlen=10_000_000, buffer_max=1_000_000, batch_size=256,
                     flush_interval_s=0.005)
    n = 100_000
    before = used(sync)
    log.start()
    ids = []
    for i in range(n):
        rid = keys.new_request_id(time.time())
        ids.append(rid)
        log.append(LogRecord(rid, "primary", f"{time.time():.3f}", payloads[i % len(payloads)]))
        if i % 5_000 == 0:
            await asyncio.sleep(0)
    while log.buffered:
        await asyncio.sleep(0.05)
    logged = used(sync)
    for start in range(0, n // 2, 1_000):
        await log.labels([(rid, 1) for rid in ids[start:start + 1_000]])
    labelled = used(sync)
    await log.stop()
    await client.aclose()
    return {"records": n, "labelled": n // 2,
            "bytes_per_logged_request": round((logged - before) / n),
            "bytes_per_label": round((labelled - logged) / (n // 2)),
            "bytes_per_labelled_request": round((logged - before) / n + (labelled - logged) / (n // 2))}


async def steady_state(url: str, password: str, payloads: list[dict[str, Any]]) -> dict[str, Any]:
    import redis
    import redis.asyncio as aioredis

    sync = redis.Redis.from_url(url, password=password)
    sync.flushall()
    client = aioredis.Redis.from_url(url, password=password)
    log = FeatureLog(client, "steady", retention_s=RETENTION_S, maxlen=10_000_000, buffer_max=1_000_000,
                     batch_size=512, flush_interval_s=0.01)
    log.start()
    samples: list[dict[str, Any]] = []
    t0 = time.monotonic()
    next_sample = 0.0
    sent = 0
    tick = 0.01
    while sent < TOTAL:
        target = min(TOTAL, int((time.monotonic() - t0) * RATE))
        now = time.time()
        while sent < target:
            log.append(LogRecord(keys.new_request_id(now), "primary", f"{now:.3f}", payloads[sent % len(payloads)]))
            sent += 1
        elapsed = time.monotonic() - t0
        if elapsed >= next_sample:
            samples.append({"t_s": round(elapsed, 1), "requests": sent, "used_memory_mb": round(used(sync) / 2**20, 1),
                            "stream_entries": sync.xlen("steady:features"), "buffered": log.buffered})
            next_sample += SAMPLE_EVERY_S
        await asyncio.sleep(tick)
    while log.buffered:
        await asyncio.sleep(0.05)
    elapsed = time.monotonic() - t0
    samples.append({"t_s": round(elapsed, 1), "requests": sent, "used_memory_mb": round(used(sync) / 2**20, 1),
                    "stream_entries": sync.xlen("steady:features"), "buffered": log.buffered})
    stats = log.stats
    await log.stop()
    await client.aclose()
    settled = [s for s in samples if s["t_s"] >= keys.BUCKET_S + RETENTION_S]
    mem = [s["used_memory_mb"] for s in settled]
    return {"rate": RATE, "requests": sent, "retention_s": RETENTION_S, "seconds": round(elapsed, 1),
            "written": stats.written, "dropped": stats.dropped, "samples": samples,
            "settled_min_mb": min(mem) if mem else None, "settled_max_mb": max(mem) if mem else None,
            "final_mb": samples[-1]["used_memory_mb"]}


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="healmesh-flbench-"))
    password = secrets.token_urlsafe(16)
    port = procs.free_port()
    server = procs.redis_server(port, work / "redis", work / "logs", persist=True, password=password,
                                appendfsync="everysec", maxmemory="1gb", maxmemory_policy="volatile-ttl").launch(20)
    url = local_redis_url(port)
    try:
        payloads = shapes()
        print("bytes per request (100,000 records) ...", flush=True)
        per = asyncio.run(bytes_per_request(url, password, payloads))
        print(per, flush=True)
        print(f"steady state: {TOTAL:,} records at {RATE:,}/s, retention {RETENTION_S} s ...", flush=True)
        steady = asyncio.run(steady_state(url, password, payloads))
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    rows = "\n".join(f"| {s['t_s']} | {s['requests']:,} | {s['stream_entries']:,} | {s['used_memory_mb']} |"
                     for s in steady["samples"])
    spread = (f"{steady['settled_min_mb']}–{steady['settled_max_mb']} MB"
              if steady["settled_min_mb"] is not None else "n/a")
    md = f"""# Feature log: Redis memory

`python bench/feature_log_bench.py` (a private redis-server configured as `make up` does: password,
maxmemory 1gb, volatile-ttl, AOF everysec; the gateway's `FeatureLog`; records shaped like the
gateway's: 16 features and the answer).

## Bytes per request (100,000 records, retention longer than the run)

| what | bytes |
|---|---|
| a logged request (stream entry + its marker in the minute hash) | {per['bytes_per_logged_request']} |
| its label (one more field in the minute hash) | {per['bytes_per_label']} |
| a labelled request | {per['bytes_per_labelled_request']} |

Before this layout (one `healmesh:req:<id>` hash per request, 7 days, beside a stream capped at
1,000,000 entries) a request cost about 1.2 KB and the hashes were never bounded (issue 8: 925 MB
after 770,000 requests).

## 1,000,000 requests at {RATE:,}/s, label retention {RETENTION_S} s

Memory is bounded by rate x retention: stream entries older than the retention are trimmed as
new ones are written (MINID), so the stream holds a flat {RATE * RETENTION_S:,} entries; a
minute's label hash expires {RETENTION_S} s after its minute ends, so between {RETENTION_S} and
{keys.BUCKET_S + RETENTION_S} s of markers are held and memory saw-tooths within a fixed band,
a minute at a time. From {keys.BUCKET_S + RETENTION_S} s on (two full minutes and more),
`used_memory` stayed within **{spread}**; after the last of the {steady['requests']:,} requests it
was {steady['final_mb']} MB. Written {steady['written']:,}, dropped {steady['dropped']}.

| seconds | requests | stream entries | used_memory (MB) |
|---|---|---|---|
{rows}

Sizing: Redis memory is about rate x retention x the bytes above (plus the minute a label hash
spans). At 2,000 req/s and a 1 h retention that is 7.2 million requests, about
{round(7.2e6 * per['bytes_per_labelled_request'] / 2**30, 1)} GiB: set `HEALMESH_LABEL_RETENTION_S` to
your label delay and `HEALMESH_REDIS_MAXMEMORY` above what it needs (the default 1gb holds about
{int(2**30 / per['bytes_per_labelled_request']):,} labelled requests: an hour at about
{int(2**30 / per['bytes_per_labelled_request'] / 3600)} req/s). Past `maxmemory`, Redis evicts the
oldest label hashes first (`volatile-ttl`: only they carry a TTL); the streams and the control
state are never evicted.
"""
    write_results(ROOT / "bench" / "results", "feature_log", {"bytes_per_request": per, "steady": steady}, md)


if __name__ == "__main__":
    main()
