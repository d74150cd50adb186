"""Overload benchmark (issue 12, item 4, "honest benchmarks"), 127.0.0.1 only, bounded in time.

The whole mesh through the gateway's fast route (``POST /api/v1/predict``, one transaction
object) against a hand-rolled one-hop FastAPI server doing the same work
(``bench/plain_fastapi_server.py``: both bundles, 80 % XGBoost / 20 % PyTorch, one request
scored at a time, the same validation and GC tuning) at 64, 256 and 1,024 clients; at 64
clients also the gateway's typed BentoML route (``POST /predict``, ``{"rows": [tx]}``) when the
gateway has one (a probe request answers 200; else it is skipped and the report says so).

Each run is wrk (2 threads, ``--timeout 2s``, one sampled transaction as the body, answers
counted by status: goodput = 200 answers per second) with, alongside it, a probe client in
this process (a few sequential keep-alive connections sending the same request back to back)
that pairs each answer's status with its latency: wrk cannot, and it is where the admitted
answers' latency under shedding and the shed answers' latency come from. The gateway's
``/metrics`` is read before and after each run for its rejected / shed counters.

``--rounds`` rounds (default 3); in each, every client level, and at each level the systems
in alternating order. The report gives per system and level the median and the spread (min
to max) over the rounds, the mesh / baseline throughput ratio at 64 clients, and the issue's
goals with the measured values (reported, not asserted).

    python bench/overload_bench.py [--duration 20] [--rounds 3] [--levels 64,256,1024]
        [--systems mesh,baseline,mesh_typed] [--gateway-workers N] [--gateway-env KEY=VALUE ...]
        [--baseline-workers N] [--out bench/results]

Self-contained: trains the models into a temporary home, starts its own Redis, the three
scorers, the gateway and the baseline on free ports, and stops them all at the end. Writes
``overload_bench.json`` and ``overload_bench.md``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import resource
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import (  # noqa: E402
    Mesh,
    fmt,
    one_transaction,
    prepare,
    r2,
    run_order,
    run_wrk,
    spread,
    start_mesh,
    write_results,
)

from healmesh.ops import procs  # noqa: E402
from healmesh.policies import routing  # noqa: E402
from healmesh.settings import get_settings  # noqa: E402
from healmesh.urls import local_redis_url  # noqa: E402

TOKEN = "bench-admin-token-0123"
LEVELS = (64, 256, 1024)
SYSTEMS = ("mesh", "baseline", "mesh_typed")
TYPED_LEVEL = 64  # the typed route is measured at this level only
SHED = ("503", "429")
WRK_THREADS = 2
SHED_WITHIN_MS = 10.0
DESCRIPTIONS = {
    "mesh": "gateway fast route `POST /api/v1/predict`, body: one transaction object",
    "baseline": "plain FastAPI one hop `POST /predict`, body: a list of one transaction",
    "mesh_typed": "gateway typed BentoML route `POST /predict`, body: `{\"rows\": [tx]}`",
}


# --- the probe client ----------------------------------------------------------------------------

class Probe:
    """``connections`` threads, each one keep-alive connection sending ``body`` back to back
    until stopped, recording (status, latency ms) per request; status 0: no answer within
    ``timeout_s`` or a broken connection. Also the gateway worker ids seen (x-healmesh-worker)."""

    def __init__(self, url: str, body: str, connections: int, timeout_s: float) -> None:
        parts = urlsplit(url)
        self.host, self.port, self.path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path or "/"
        self.body = body.encode()
        self.connections, self.timeout_s = connections, timeout_s
        self.samples: list[tuple[int, float]] = []
        self.workers: set[str] = set()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def _loop(self) -> None:
        headers = {"Content-Type": "application/json", "Content-Length": str(len(self.body))}
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
        mine: list[tuple[int, float]] = []
        workers: set[str] = set()
        try:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                try:
                    conn.request("POST", self.path, body=self.body, headers=headers)
                    resp = conn.getresponse()
                    resp.read()
                    status = resp.status
                    worker = resp.getheader("x-healmesh-worker")
                    if worker:
                        workers.add(worker)
                except (OSError, http.client.HTTPException):
                    status = 0
                    conn.close()  # the next request opens a new connection
                mine.append((status, (time.perf_counter() - t0) * 1000.0))
                if status == 0:
                    self._stop.wait(0.05)
        finally:
            conn.close()
            with self._lock:
                self.samples += mine
                self.workers |= workers

    def start(self) -> Probe:
        self._threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(self.connections)]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> list[tuple[int, float]]:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.timeout_s + 5)
        return self.samples


def pct(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile ``q`` (0-100) of ``values``; None when empty."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q / 100.0 * len(s) + 0.5)) - 1))]


def probe_summary(samples: Sequence[tuple[int, float]]) -> dict[str, Any]:
    admitted = [ms for st, ms in samples if st == 200]
    shed = [ms for st, ms in samples if str(st) in SHED]
    other: dict[str, int] = {}
    for st, _ in samples:
        if st != 200 and str(st) not in SHED:
            key = "no_answer" if st == 0 else str(st)
            other[key] = other.get(key, 0) + 1
    n = len(samples)
    return {"n": n, "admitted_n": len(admitted), "admitted_p50_ms": r2(pct(admitted, 50)),
            "admitted_p99_ms": r2(pct(admitted, 99)), "shed_n": len(shed),
            "shed_share": round(len(shed) / n, 4) if n else None, "shed_p50_ms": r2(pct(shed, 50)),
            "shed_p99_ms": r2(pct(shed, 99)), "shed_max_ms": r2(max(shed) if shed else None), "other": other}


# --- the gateway's shed counters -----------------------------------------------------------------

SHED_SAMPLE = re.compile(r"^(healmesh_gateway_\w*(?:rejected|shed)\w*_total)(\{[^}]*\})?\s+(\S+)", re.M)


def shed_counters(gateway_url: str) -> dict[str, float] | None:
    """Every ``healmesh_gateway_*rejected*_total`` / ``*shed*_total`` sample of the gateway's
    ``/metrics`` (name and labels -> value); None when it does not answer."""
    try:
        text = httpx.get(gateway_url + "/metrics", timeout=5).text
    except httpx.HTTPError:
        return None
    out: dict[str, float] = {}
    for name, labels, value in SHED_SAMPLE.findall(text):
        try:
            out[name + labels] = out.get(name + labels, 0.0) + float(value)
        except ValueError:
            continue
    return out


def counter_delta(before: dict[str, float] | None, after: dict[str, float] | None) -> dict[str, float] | None:
    if before is None or after is None:
        return None
    return {k: v - before.get(k, 0.0) for k, v in sorted(after.items()) if v - before.get(k, 0.0)}


# --- one run -------------------------------------------------------------------------------------

@dataclass
class Target:
    system: str
    url: str
    body: str
    metrics_url: str | None = None  # the gateway, for the shed counters


@dataclass
class Config:
    duration: int
    timeout_s: float
    probe_connections: int
    pause_s: float
    work: Path
    log: Callable[[str], None] = field(default=print)


def measure(target: Target, clients: int, cfg: Config) -> dict[str, Any]:
    before = shed_counters(target.metrics_url) if target.metrics_url else None
    probe = Probe(target.url, target.body, cfg.probe_connections, cfg.timeout_s).start()
    try:
        wrk = run_wrk(target.url, target.body, clients, cfg.duration, cfg.work, timeout=f"{cfg.timeout_s:g}s",
                      threads=WRK_THREADS, statuses=True)
    finally:
        samples = probe.stop()
    after = shed_counters(target.metrics_url) if target.metrics_url else None
    st = wrk["statuses"]
    ok = st.get("200", 0)
    shed = sum(st.get(s, 0) for s in SHED)
    errors = wrk["errors"]
    run = {**wrk, "goodput": round(ok / wrk["seconds"], 1), "shed": shed,
           "other_status": sum(n for s, n in st.items() if s != "200" and s not in SHED),
           "socket_errors": errors["connect"] + errors["read"] + errors["write"], "timeouts": errors["timeout"],
           "non_2xx": errors["non_2xx"], "probe": probe_summary(samples), "gateway_worker_ids": sorted(probe.workers),
           "server_shed": counter_delta(before, after), "_samples": samples}
    # wrk's latencies are the admitted ones when every answer it got was a 200
    if shed or run["other_status"]:
        run["admitted_p99_ms"], run["admitted_p99_source"] = run["probe"]["admitted_p99_ms"], "probe"
    else:
        run["admitted_p99_ms"], run["admitted_p99_source"] = run["p99_ms"], "wrk"
    return run


# --- summary, goals, report ----------------------------------------------------------------------

STAT_KEYS = ("rps", "goodput", "p50_ms", "p99_ms", "admitted_p99_ms", "timeouts", "non_2xx", "shed", "other_status",
             "socket_errors")


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {k: spread(r[k] for r in runs) for k in STAT_KEYS}
    pooled = [s for r in runs for s in r["_samples"]]
    out["probe_pooled"] = probe_summary(pooled)
    server: dict[str, float] = {}
    for r in runs:
        for k, v in (r["server_shed"] or {}).items():
            server[k] = server.get(k, 0.0) + v
    out["server_shed_total"] = server
    out["rounds"] = len(runs)
    return out


def goals(summary: dict[str, dict[int, dict[str, Any]]], runs: dict[str, dict[int, list[dict[str, Any]]]],
          levels: Sequence[int]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Each goal of the issue with the measured value; and the mesh / baseline ratios at 64."""
    out: list[dict[str, Any]] = []

    def add(goal: str, measured: str, met: bool | None) -> None:
        out.append({"goal": goal, "measured": measured, "met": met})

    mesh, base = summary.get("mesh", {}), summary.get("baseline", {})
    ratio: dict[str, Any] | None = None
    if 64 in mesh and 64 in base:
        by_round_m = {r["round"]: r for r in runs["mesh"][64]}
        pairs = [(by_round_m[r["round"]], r) for r in runs["baseline"][64] if r["round"] in by_round_m]
        ratios = [m["rps"] / b["rps"] for m, b in pairs if b["rps"]]
        good = [m["goodput"] / b["goodput"] for m, b in pairs if b["goodput"]]
        ratio = {"rps": spread(round(x, 3) for x in ratios), "goodput": spread(round(x, 3) for x in good),
                 "per_round": [round(x, 3) for x in ratios]}
        med = ratio["rps"]["median"]
        add("64 clients: mesh throughput >= 1.2x the baseline's (median of the per-round ratios)",
            f"{med:.2f}x (spread {ratio['rps']['min']:.2f}-{ratio['rps']['max']:.2f})" if med is not None else "n/a",
            None if med is None else med >= 1.2)
        mp, bp = mesh[64]["p99_ms"]["median"], base[64]["p99_ms"]["median"]
        add("64 clients: mesh p99 <= the baseline's (medians)", f"{mp} ms vs {bp} ms",
            None if mp is None or bp is None else mp <= bp)
    else:
        add("64 clients: mesh throughput >= 1.2x the baseline's", "not measured (needs mesh and baseline at 64)", None)
        add("64 clients: mesh p99 <= the baseline's", "not measured", None)
    if 64 in mesh:
        errs = sum(r["non_2xx"] + r["socket_errors"] + r["timeouts"] for r in runs["mesh"][64])
        add("64 clients: mesh answers with 0 errors (non-2xx, socket errors, timeouts; all rounds)",
            f"{errs:,} errors", errs == 0)
    high = [c for c in levels if c > 64 and c in mesh]
    peak = mesh[64]["goodput"]["median"] if 64 in mesh else None
    ref_p99 = mesh[64]["admitted_p99_ms"]["median"] if 64 in mesh else None
    for c in high:
        s, rs = mesh[c], runs["mesh"][c]
        g = s["goodput"]["median"]
        if peak:
            add(f"{c:,} clients: mesh goodput >= 90 % of its 64-client peak ({peak:,.0f}/s)",
                f"{g:,.0f}/s = {g / peak:.0%}", g >= 0.9 * peak)
        else:
            add(f"{c:,} clients: mesh goodput >= 90 % of its 64-client peak", "not measured (no 64-client run)", None)
        ap = s["admitted_p99_ms"]["median"]
        sources = sorted({r["admitted_p99_source"] for r in rs})
        if ref_p99 and ap is not None:
            add(f"{c:,} clients: admitted p99 <= 2x the 64-client p99 ({ref_p99} ms)",
                f"{ap} ms = {ap / ref_p99:.1f}x (from {'/'.join(sources)})", ap <= 2 * ref_p99)
        else:
            add(f"{c:,} clients: admitted p99 <= 2x the 64-client p99", "not measured", None)
        tos = sum(r["timeouts"] for r in rs)
        add(f"{c:,} clients: no client timeouts (wrk, all rounds)", f"{tos:,} timeouts", tos == 0)
        shed = sum(r["shed"] for r in rs)
        bad = sum(r["other_status"] + r["socket_errors"] + r["timeouts"] for r in rs)
        pooled = s["probe_pooled"]
        mx = pooled["shed_max_ms"]
        if shed == 0 and pooled["shed_n"] == 0:
            measured = f"nothing shed; {bad:,} answers neither 200 nor 503/429 (other status, socket error, timeout)"
            met = bad == 0
        else:
            measured = (f"{shed:,} shed (wrk), {bad:,} neither 200 nor 503/429; probe: {pooled['shed_n']:,} shed "
                        f"of {pooled['n']:,}, max {mx} ms, p99 {pooled['shed_p99_ms']} ms")
            met = bad == 0 and (mx is None or mx <= SHED_WITHIN_MS)
            if mx is None:
                measured += " (no shed answer in the probe sample: latency not measured)"
        add(f"{c:,} clients: every request not admitted answered 503/429 within {SHED_WITHIN_MS:g} ms", measured, met)
    return out, ratio


def render(meta: dict[str, Any], summary: dict[str, dict[int, dict[str, Any]]], goal_rows: list[dict[str, Any]],
           ratio: dict[str, Any] | None) -> str:
    m = meta
    lines = [f"# Overload benchmark ({m['date']})", "",
             f"`{m['command']}`", "",
             f"{m['machine']}; {m['cpu_model']}, {m['cpus']} CPUs; load average at start {m['loadavg_at_start']}. "
             f"Gateway: {m['gateway_workers']} worker(s) ({m['gateway_workers_seen']} seen answering the probe), "
             f"three scorers (one worker each), its own Redis; gateway env: {m['gateway_env'] or 'none'}."
             + (f" Baseline: `bench/plain_fastapi_server.py`, {m['baseline_workers']} uvicorn worker(s), both "
                f"bundles, {m['xgb_share']:.0%} XGBoost / {1 - m['xgb_share']:.0%} PyTorch, one request scored at "
                "a time, the same validation and GC tuning." if "baseline" in m["systems_measured"] else ""), "",
             f"wrk {m['wrk_threads']} threads, `--timeout {m['client_timeout_s']:g}s`, {m['duration_s']} s a run, "
             f"{m['rounds']} round(s), {m['warmup_s']} s warm-up per system, {m['pause_s']} s pause between runs; "
             f"the systems alternate in order within each round. Body: one sampled transaction (no card id: "
             f"routed by the weights). Cells: median (min-max) over the rounds.", ""]
    lines += [f"- **{s}**: {DESCRIPTIONS[s]}" for s in m["systems_measured"]]
    if m.get("typed_route_note"):
        lines += [f"- {m['typed_route_note']}"]
    lines += ["", "## Throughput and latency (wrk)", "",
              "goodput: 200 answers per second. timeouts: no answer within the client timeout (not in the "
              "percentiles). non-2xx: answers of status >= 400; shed: 503 + 429 among them.", "",
              "| system | clients | req/s | goodput/s | p50 ms | p99 ms | timeouts | non-2xx | shed | socket errors |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for system, by_level in summary.items():
        for c, s in by_level.items():
            lines.append(f"| {system} | {c:,} | {fmt(s['rps'])} | {fmt(s['goodput'])} | {fmt(s['p50_ms'], 2)} | "
                         f"{fmt(s['p99_ms'], 2)} | {fmt(s['timeouts'], 0)} | {fmt(s['non_2xx'], 0)} | "
                         f"{fmt(s['shed'], 0)} | {fmt(s['socket_errors'], 0)} |")
    lines += ["", f"## Latency by status (probe sample: {m['probe_connections']} sequential keep-alive connections "
              "alongside wrk, all rounds pooled)", "",
              "wrk cannot pair a latency with a status: these are from the probe's sample (n answers), not from "
              "every request. Admitted: 200 answers; shed: 503/429.", "",
              "| system | clients | n | admitted p50 ms | admitted p99 ms | shed share | shed p50 ms | shed p99 ms | "
              "shed max ms | other |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for system, by_level in summary.items():
        for c, s in by_level.items():
            p = s["probe_pooled"]
            share = "-" if p["shed_share"] is None else f"{p['shed_share']:.1%}"
            other = ", ".join(f"{k}: {v}" for k, v in p["other"].items()) or "-"
            lines.append(f"| {system} | {c:,} | {p['n']:,} | {p['admitted_p50_ms'] or '-'} | "
                         f"{p['admitted_p99_ms'] or '-'} | {share} | {p['shed_p50_ms'] or '-'} | "
                         f"{p['shed_p99_ms'] or '-'} | {p['shed_max_ms'] or '-'} | {other} |")
    server = {(system, c): s["server_shed_total"] for system, by_level in summary.items() if system != "baseline"
              for c, s in by_level.items()}
    lines += ["", "## Shed server-side (gateway `/metrics`, delta over the runs, all rounds summed)", "",
              "These count the probe's requests too, and wrk's still in flight when it stopped.", ""]
    if m.get("metrics_note"):
        lines += [m["metrics_note"], ""]
    lines += [f"- {system} at {c:,} clients: "
              + (", ".join(f"`{k}` +{v:,.0f}" for k, v in counters.items()) if counters else "none")
              for (system, c), counters in server.items()]
    lines += ["", "## Mesh / baseline at 64 clients", ""]
    if ratio:
        lines += [f"Throughput ratio (per round, then median): **{fmt(ratio['rps'], 2)}**; goodput ratio "
                  f"{fmt(ratio['goodput'], 2)}; per round: {', '.join(f'{x:.2f}' for x in ratio['per_round'])}."]
    else:
        lines += ["Not measured (needs the mesh and the baseline at 64 clients)."]
    lines += ["", "## Goals (issue 12; reported, not asserted)", "", "| goal | measured | met |", "|---|---|---|"]
    for g in goal_rows:
        met = "n/a" if g["met"] is None else ("yes" if g["met"] else "**no**")
        lines.append(f"| {g['goal']} | {g['measured']} | {met} |")
    lines += ["", "Admitted p99 (any level, the 64-client reference included): wrk's p99 in a run where every "
              "answer was a 200, else the probe's admitted p99; the median over the rounds. The 64-client peak "
              "is the mesh's median goodput at 64 clients."]
    return "\n".join(lines) + "\n"


# --- main ----------------------------------------------------------------------------------------

def raise_fd_limit(need: int) -> None:
    """1,024 clients: wrk and the servers (children inherit the limit) need more descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (need if hard == resource.RLIM_INFINITY else min(need, hard), hard))


ADMISSION_WORDS = ("in_flight", "admission", "shed", "concurrency", "limit", "workers", "queue")


def admission_settings(settings: Any, gateway_env: dict[str, str]) -> dict[str, Any]:
    """The settings that shape overload behaviour, as this process reads them (the gateway's
    extra environment, given separately, overrides them there)."""
    try:
        dumped = settings.model_dump(mode="json")
    except Exception as exc:  # a settings field that does not serialise: say so, do not fail the run
        return {"error": repr(exc)}
    picked = {k: v for k, v in dumped.items() if any(w in k for w in ADMISSION_WORDS)}
    return {**picked, "gateway_env_overrides": gateway_env}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def csv_ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def csv_systems(text: str) -> list[str]:
    out = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in out if x not in SYSTEMS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown system(s) {bad}; choose from {', '.join(SYSTEMS)}")
    return out


def key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=int, default=20, help="seconds per run (default 20)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    ap.add_argument("--levels", type=csv_ints, default=list(LEVELS), help="client counts (default 64,256,1024)")
    ap.add_argument("--systems", type=csv_systems, default=list(SYSTEMS),
                    help="mesh, baseline, mesh_typed (at 64 clients, when the gateway has the route); default all")
    ap.add_argument("--gateway-workers", type=int, default=None,
                    help="gateway workers (HEALMESH_GATEWAY_WORKERS for the gateway; default: its own default)")
    ap.add_argument("--gateway-env", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment for the gateway (repeatable)")
    ap.add_argument("--baseline-workers", type=int, default=None,
                    help="uvicorn workers of the baseline (default: the gateway's default worker count)")
    ap.add_argument("--client-timeout", type=float, default=2.0, help="wrk's --timeout and the probe's (s)")
    ap.add_argument("--probe-connections", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=3, help="seconds of warm-up per system (64 clients)")
    ap.add_argument("--pause", type=float, default=2.0, help="seconds between runs (queues drain)")
    ap.add_argument("--rows", type=int, default=40_000, help="training rows")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    if args.rounds < 1 or args.duration < 1 or not args.levels or not args.systems:
        ap.error("--rounds, --duration, --levels and --systems need at least one")
    command = "python bench/overload_bench.py " + " ".join(sys.argv[1:])
    raise_fd_limit(max(args.levels) * 4 + 1024)
    loadavg = ", ".join(f"{x:.2f}" for x in os.getloadavg())  # 1, 5, 15 minutes: how quiet the machine was

    gateway_env = dict(args.gateway_env)
    if args.gateway_workers is not None:
        gateway_env["HEALMESH_GATEWAY_WORKERS"] = str(args.gateway_workers)
    want_mesh = any(s.startswith("mesh") for s in args.systems)

    bench = prepare(args.rows)
    settings = get_settings()
    gateway_workers = int(gateway_env.get("HEALMESH_GATEWAY_WORKERS", settings.gateway_workers))
    baseline_workers = args.baseline_workers or settings.gateway_workers
    work = bench.work
    tx = one_transaction()  # no card id: routed by the weights, not stuck to one variant
    xgb_share = sum(w for v, w in routing.DEFAULT_WEIGHTS.items() if v != routing.PYTORCH)  # the gateway's default
    redis_srv: procs.ServerProcess | None = None
    mesh: Mesh | None = None
    baseline: procs.ServerProcess | None = None
    runs: dict[str, dict[int, list[dict[str, Any]]]] = {}
    notes: dict[str, str] = {}
    workers_seen: set[str] = set()  # x-healmesh-worker ids in the probe's answers
    try:
        targets: dict[str, Target] = {}
        if want_mesh:
            print("starting Redis, the scorers and the gateway ...", flush=True)
            redis_srv = procs.redis_server(procs.free_port(), work / "redis", work / "logs").launch(timeout=20)
            env = {**bench.env, "HEALMESH_ADMIN_TOKEN": TOKEN, "HEALMESH_REDIS_URL": local_redis_url(redis_srv.port)}
            mesh = start_mesh(work, env, gateway_env)
            gw = mesh.gateway.url
            if "mesh" in args.systems:
                targets["mesh"] = Target("mesh", gw + "/api/v1/predict", json.dumps(tx), gw)
            if "mesh_typed" in args.systems:
                typed = Target("mesh_typed", gw + "/predict", json.dumps({"rows": [tx]}), gw)
                try:
                    status = httpx.post(typed.url, content=typed.body, timeout=10,
                                        headers={"Content-Type": "application/json"}).status_code
                except httpx.HTTPError as exc:
                    status = f"no answer ({exc!r})"
                if status == 200:
                    targets["mesh_typed"] = typed
                    if TYPED_LEVEL not in args.levels:
                        notes["typed"] = f"the typed route is measured at {TYPED_LEVEL} clients only: not in --levels"
                else:
                    notes["typed"] = (f"mesh_typed skipped: the gateway's `POST /predict` answered {status} to a "
                                      "probe request (the typed BentoML route is not there)")
                print(notes.get("typed", "typed route: answers 200, included"), flush=True)
        if "baseline" in args.systems:
            import bentoml

            print(f"starting the baseline ({baseline_workers} worker(s)) ...", flush=True)
            bundles = {k: bentoml.models.get(bench.report.models[k].bento_tag).path for k in ("xgboost", "mlp")}
            port = procs.free_port()
            baseline = procs.ServerProcess(
                name="bench-plain-fastapi", port=port, log_path=work / "logs" / "plain-fastapi.log", cwd=ROOT,
                ready_path="/readyz", env={**bench.env, "PYTHONPATH": str(ROOT)},
                cmd=[sys.executable, str(ROOT / "bench" / "plain_fastapi_server.py"), "--xgb-bundle",
                     bundles["xgboost"], "--torch-bundle", bundles["mlp"], "--workers", str(baseline_workers),
                     "--xgb-share", f"{xgb_share:g}",
                     "--port", str(port)]).launch(timeout=180)
            targets["baseline"] = Target("baseline", baseline.url + "/predict", json.dumps([tx]))
        for t in targets.values():  # each answers 200 before anything is measured
            r = httpx.post(t.url, content=t.body, headers={"Content-Type": "application/json"}, timeout=10)
            if r.status_code != 200:
                raise SystemExit(f"{t.system} answered {r.status_code} to {t.url}: {r.text[:300]}")
        if not targets:
            raise SystemExit("nothing to measure")
        if mesh is not None and shed_counters(mesh.gateway.url) == {}:
            notes["metrics"] = ("The gateway's `/metrics` had no `healmesh_gateway_*rejected*_total` / `*shed*_total` "
                                "sample before the first run (a counter appears with its first increment).")
        cfg = Config(duration=args.duration, timeout_s=args.client_timeout, probe_connections=args.probe_connections,
                     pause_s=args.pause, work=work)
        for t in targets.values():
            print(f"warm-up {t.system} ({args.warmup} s)", flush=True)
            run_wrk(t.url, t.body, 64, args.warmup, work, timeout=f"{args.client_timeout:g}s", threads=WRK_THREADS)
            time.sleep(args.pause)
        k = 0
        for rnd in range(args.rounds):
            for clients in args.levels:
                here = [s for s in SYSTEMS if s in targets and (s != "mesh_typed" or clients == TYPED_LEVEL)]
                for system in run_order(here, k):
                    run = measure(targets[system], clients, cfg)
                    run["round"] = rnd
                    runs.setdefault(system, {}).setdefault(clients, []).append(run)
                    workers_seen.update(run["gateway_worker_ids"])
                    p = run["probe"]
                    print(f"round {rnd} {system:<10} c={clients:<5} {run['rps']:>8} req/s  goodput "
                          f"{run['goodput']:>8}/s  p50 {run['p50_ms']:>7} ms  p99 {run['p99_ms']:>7} ms  "
                          f"timeouts {run['timeouts']}  statuses {run['statuses']}  socket errors "
                          f"{run['socket_errors']}  probe n={p['n']} admitted p99 {p['admitted_p99_ms']} ms "
                          f"shed {p['shed_n']} (max {p['shed_max_ms']} ms)  server shed {run['server_shed']}",
                          flush=True)
                    time.sleep(args.pause)
                k += 1
    finally:
        for server in (baseline, mesh, redis_srv):
            if server is not None:
                try:
                    server.stop()
                except Exception as exc:  # the others are stopped all the same
                    print(f"stopping {server}: {exc!r}", file=sys.stderr)
        bench.cleanup()

    try:
        summary = {s: {c: summarise(rs) for c, rs in sorted(by.items())} for s, by in runs.items()}
        goal_rows, ratio = goals(summary, runs, args.levels)
    finally:
        for by in runs.values():  # the raw samples stay out of the JSON; their summaries are in it
            for rs in by.values():
                for r in rs:
                    r.pop("_samples", None)
        args.out.mkdir(parents=True, exist_ok=True)  # the measurements survive a failure below
        (args.out / "overload_bench.runs.json").write_text(json.dumps(runs, indent=1))
    meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": command,
            "machine": platform.platform(), "cpu_model": cpu_model(), "cpus": os.cpu_count(),
            "loadavg_at_start": loadavg, "gateway_workers": gateway_workers,
            "gateway_workers_seen": len(workers_seen) if want_mesh else None,
            "gateway_env": gateway_env, "baseline_workers": baseline_workers, "xgb_share": xgb_share,
            "duration_s": args.duration, "rounds": args.rounds, "levels": args.levels,
            "systems_measured": [s for s in SYSTEMS if s in runs], "wrk_threads": WRK_THREADS,
            "client_timeout_s": args.client_timeout, "probe_connections": args.probe_connections,
            "warmup_s": args.warmup, "pause_s": args.pause, "training_rows": args.rows,
            "typed_route_note": notes.get("typed"), "metrics_note": notes.get("metrics"),
            "admission_settings": admission_settings(settings, gateway_env)}
    payload = {"meta": meta, "summary": summary, "mesh_over_baseline_at_64": ratio, "goals": goal_rows, "runs": runs}
    write_results(args.out, "overload_bench", payload, render(meta, summary, goal_rows, ratio))
    (args.out / "overload_bench.runs.json").unlink(missing_ok=True)  # in overload_bench.json now


if __name__ == "__main__":
    main()
