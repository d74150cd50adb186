"""What the benchmarks share: a throwaway environment with a trained model, wrk runs."""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from healmesh import schema
from healmesh.data import generate

ROOT = Path(__file__).resolve().parents[1]

WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [==[%s]==]
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %%d %%f %%f %%f %%f %%d %%d %%d %%d %%d\\n",
    summary.requests, summary.duration / 1e6,
    latency:percentile(50) / 1e3, latency:percentile(95) / 1e3, latency:percentile(99) / 1e3,
    e.status, e.connect, e.read, e.write, e.timeout))
end
"""

# The same, plus answers counted by status: each wrk thread has a Lua state of its own, so the
# counts are per thread (``response``) and summed in ``done`` through the thread objects that
# ``setup`` kept. A ``response`` callback costs wrk some CPU per answer (headers and body go to Lua).
WRK_STATUS_SCRIPT = WRK_SCRIPT + """
local threads = {}
setup = function(thread) table.insert(threads, thread) end
init = function(args) counts = {} end
response = function(status, headers, body) counts[status] = (counts[status] or 0) + 1 end
local plain_done = done
done = function(summary, latency, requests)
  plain_done(summary, latency, requests)
  local total = {}
  for _, t in ipairs(threads) do
    for status, n in pairs(t:get("counts")) do total[status] = (total[status] or 0) + n end
  end
  io.write("STATUS")
  for status, n in pairs(total) do io.write(string.format(" %%d:%%d", status, n)) end
  io.write("\\n")
end
"""


@dataclass
class BenchEnv:
    work: Path
    env: dict[str, str]
    report: Any  # healmesh.training.TrainReport

    def cleanup(self) -> None:
        shutil.rmtree(self.work, ignore_errors=True)


def prepare(rows: int) -> BenchEnv:
    """Temporary HEALMESH_HOME / BENTOML_HOME, no registry, a freshly trained built-in model."""
    if not shutil.which("wrk"):
        raise SystemExit("wrk not found: apt-get install wrk")
    work = Path(tempfile.mkdtemp(prefix="healmesh-bench-"))
    env = {"HEALMESH_HOME": str(work / "home"), "BENTOML_HOME": str(work / "bentoml"),
           # no registry: the scorers serve their built-in BentoML models
           "HEALMESH_MLFLOW_TRACKING_URI": f"sqlite:///{work / 'none' / 'mlflow.db'}"}
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.update(env)
    from healmesh.settings import get_settings
    from healmesh.training import TrainConfig, train

    get_settings.cache_clear()
    print(f"training the benchmark model on {rows} rows ...", flush=True)
    report = train(generate(rows, seed=7), get_settings(), TrainConfig(register=False, mlp_epochs=5))
    return BenchEnv(work=work, env=env, report=report)


@dataclass
class Mesh:
    scorers: dict[str, Any]  # name -> procs.ServerProcess
    gateway: Any

    def stop(self) -> None:
        self.gateway.stop()
        for s in self.scorers.values():
            s.stop()


def start_mesh(work: Path, env: dict[str, str], gateway_env: dict[str, str] | None = None) -> Mesh:
    """The three scorers and a gateway in front of them, each on a free 127.0.0.1 port, with ``env``
    (Redis and tokens included) and, for the gateway alone, ``gateway_env`` on top; logs under
    ``work / "logs"``."""
    from healmesh.ops import procs

    scorers = {n: procs.bentoml_server(f"bench-{n}", t, procs.free_port(), work / "logs", env=env, cwd=ROOT)
               for n, t in procs.SCORERS.items()}
    gw = procs.bentoml_server("bench-gateway", "gateway.service:Gateway", procs.free_port(), work / "logs", cwd=ROOT,
                              env={**env, "HEALMESH_XGB_URL": scorers["xgboost"].url,
                                   "HEALMESH_TORCH_URL": scorers["pytorch"].url,
                                   "HEALMESH_FALLBACK_URL": scorers["fallback"].url, **(gateway_env or {})})
    try:  # one that does not get ready: the others started are stopped again
        for s in scorers.values():
            s.launch()
        gw.launch()
    except BaseException:
        for s in scorers.values():
            s.stop()
        raise
    return Mesh(scorers, gw)


def one_transaction(card_id: bool = False) -> dict[str, Any]:
    cols = list(schema.active().feature_names) + ([schema.active().entity_key] if card_id else [])
    row = generate(1, seed=42)[cols].iloc[0].to_dict()
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}


def run_wrk(url: str, body: str, connections: int, duration: int, workdir: Path, *, timeout: str = "10s",
            threads: int = 2, statuses: bool = False) -> dict[str, Any]:
    """wrk POSTing ``body`` to ``url`` over ``connections`` keep-alive connections for ``duration``
    seconds: req/s, latency percentiles (answers slower than ``timeout`` are not in them: wrk
    counts them as timeouts) and errors (``non_2xx``: answers of status 400 or more). With
    ``statuses``, also the answers counted by status (``"statuses": {"200": n, "503": n, ...}``)."""
    script = workdir / f"wrk-{abs(hash(body))}{'-status' if statuses else ''}.lua"
    script.write_text((WRK_STATUS_SCRIPT if statuses else WRK_SCRIPT) % body)
    threads = max(1, min(threads, connections))
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--timeout", timeout,
                          "-s", str(script), url], capture_output=True, text=True, check=True,
                         timeout=duration + 120).stdout
    m = re.search(r"^RESULT (.*)$", out, re.M)
    if not m:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    req, dur, p50, p95, p99, status, connect, read, write, timeout_n = m.group(1).split()
    requests, seconds = int(req), float(dur)
    result: dict[str, Any] = {
        "connections": connections, "requests": requests, "rps": round(requests / seconds, 1),
        "p50_ms": round(float(p50), 2), "p95_ms": round(float(p95), 2), "p99_ms": round(float(p99), 2),
        "errors": {"non_2xx": int(status), "connect": int(connect), "read": int(read), "write": int(write),
                   "timeout": int(timeout_n)}}
    if statuses:
        m = re.search(r"^STATUS(.*)$", out, re.M)
        if not m:
            raise RuntimeError(f"wrk printed no status counts:\n{out}")
        counts = dict(pair.split(":") for pair in m.group(1).split())
        result["seconds"] = round(seconds, 3)
        result["statuses"] = {k: int(v) for k, v in sorted(counts.items())}
    return result


def write_results(out_dir: Path, name: str, payload: dict[str, Any], markdown: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(payload, indent=2))
    (out_dir / f"{name}.md").write_text(markdown)
    print(f"wrote {out_dir / (name + '.json')} and {name}.md")


# --- comparisons run in alternation: order, median and spread -----------------------------------

def run_order(systems: Sequence[str], k: int) -> list[str]:
    """The systems of the ``k``-th group of runs: in order, reversed every other group."""
    return list(systems) if k % 2 == 0 else list(reversed(systems))


def r2(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def spread(values: Iterable[float | None]) -> dict[str, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return {"median": None, "min": None, "max": None}
    return {"median": r2(statistics.median(vals)), "min": r2(min(vals)), "max": r2(max(vals))}


def fmt(s: dict[str, float | None], digits: int = 1, thousands: bool = True) -> str:
    if s["median"] is None:
        return "-"

    def f(x: float | None) -> str:
        if x is None:
            return "-"
        return f"{x:,.{digits}f}" if thousands else f"{x:.{digits}f}"

    if s["min"] == s["max"]:
        return f(s["median"])
    return f"{f(s['median'])} ({f(s['min'])}-{f(s['max'])})"
