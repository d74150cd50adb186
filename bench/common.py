"""What the benchmarks share: a throwaway environment with a trained model, wrk runs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
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


def start_mesh(work: Path, env: dict[str, str]) -> Mesh:
    """The three scorers and a gateway in front of them, each on a free 127.0.0.1 port, with ``env``
    (Redis and tokens included); logs under ``work / "logs"``."""
    from healmesh.ops import procs

    scorers = {n: procs.bentoml_server(f"bench-{n}", t, procs.free_port(), work / "logs", env=env, cwd=ROOT)
               for n, t in procs.SCORERS.items()}
    for s in scorers.values():
        s.launch()
    gw = procs.bentoml_server("bench-gateway", "gateway.service:Gateway", procs.free_port(), work / "logs", cwd=ROOT,
                              env={**env, "HEALMESH_XGB_URL": scorers["xgboost"].url,
                                   "HEALMESH_TORCH_URL": scorers["pytorch"].url,
                                   "HEALMESH_FALLBACK_URL": scorers["fallback"].url}).launch()
    return Mesh(scorers, gw)


def one_transaction(card_id: bool = False) -> dict[str, Any]:
    cols = list(schema.FEATURE_NAMES) + ([schema.ENTITY_KEY] if card_id else [])
    row = generate(1, seed=42)[cols].iloc[0].to_dict()
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}


def run_wrk(url: str, body: str, connections: int, duration: int, workdir: Path) -> dict[str, Any]:
    script = workdir / f"wrk-{abs(hash(body))}.lua"
    script.write_text(WRK_SCRIPT % body)
    threads = min(2, connections)
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--timeout", "10s",
                          "-s", str(script), url], capture_output=True, text=True, check=True).stdout
    m = re.search(r"^RESULT (.*)$", out, re.M)
    if not m:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    req, dur, p50, p95, p99, status, connect, read, write, timeout = m.group(1).split()
    requests, seconds = int(req), float(dur)
    return {"connections": connections, "requests": requests, "rps": round(requests / seconds, 1),
            "p50_ms": round(float(p50), 2), "p95_ms": round(float(p95), 2), "p99_ms": round(float(p99), 2),
            "errors": {"non_2xx": int(status), "connect": int(connect), "read": int(read), "write": int(write),
                       "timeout": int(timeout)}}


def write_results(out_dir: Path, name: str, payload: dict[str, Any], markdown: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(payload, indent=2))
    (out_dir / f"{name}.md").write_text(markdown)
    print(f"wrote {out_dir / (name + '.json')} and {name}.md")
