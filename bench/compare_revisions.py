"""Did a change slow the mesh down? ``bench/overload_bench.py`` at one client level, on the
working tree and on an older revision, alternated, in the same run (127.0.0.1 only, bounded).

Each round runs the overload benchmark once per revision (the order alternates from round to
round), each in its own process with the revision's code first on ``PYTHONPATH`` (the scorers and
the gateway it starts inherit it), the same venv, the same settings. The report gives each
revision's goodput at the level (median and spread over the rounds) and the ratio of the medians.

    python bench/compare_revisions.py [--base REV] [--rounds 3] [--clients 64] [--duration 20]
        [--out bench/results]

Writes ``overload_regression.json`` and ``overload_regression.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def run_once(tree: Path, clients: int, duration: int, out: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, str(tree / "bench" / "overload_bench.py"), "--levels", str(clients), "--systems", "mesh",
           "--rounds", "1", "--duration", str(duration), "--out", str(out)]
    done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=1_200)
    if done.returncode:
        raise SystemExit(f"{tree}: overload_bench failed:\n{done.stderr[-4000:]}\n{done.stdout[-2000:]}")
    data = json.loads((out / "overload_bench.json").read_text())
    return data["summary"]["mesh"][str(clients)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="HEAD~1", help="the older revision (default HEAD~1)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--duration", type=int, default=20)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    base_rev = subprocess.run(["git", "rev-parse", "--short", args.base], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    head_rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                capture_output=True, text=True).stdout.strip())
    with tempfile.TemporaryDirectory(prefix="healmesh-base-") as tmp:
        base_tree = Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", str(base_tree), base_rev], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            trees = {"base": base_tree, "head": ROOT}
            runs: dict[str, list[dict[str, Any]]] = {"base": [], "head": []}
            started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            load = os.getloadavg()
            for r in range(args.rounds):
                order = ("base", "head") if r % 2 == 0 else ("head", "base")
                for name in order:
                    got = run_once(trees[name], args.clients, args.duration, Path(tmp) / f"{name}-{r}")
                    runs[name].append(got)
                    print(f"round {r + 1} {name}: goodput {got['goodput']['median']:.0f}/s, "
                          f"p99 {got['p99_ms']['median']:.1f} ms", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=ROOT, capture_output=True)

    def spread(name: str, key: str) -> dict[str, float]:
        values = [run[key]["median"] for run in runs[name]]
        return {"median": round(statistics.median(values), 1), "min": round(min(values), 1),
                "max": round(max(values), 1)}

    summary = {name: {"goodput": spread(name, "goodput"), "p99_ms": spread(name, "p99_ms")} for name in runs}
    ratio = summary["head"]["goodput"]["median"] / summary["base"]["goodput"]["median"]
    result = {"meta": {"date": started, "base": base_rev, "head": head_rev + ("+working tree" if dirty else ""),
                       "clients": args.clients, "duration_s": args.duration, "rounds": args.rounds,
                       "loadavg_at_start": ", ".join(f"{x:.2f}" for x in load), "cpus": os.cpu_count()},
              "summary": summary, "head_over_base_goodput": round(ratio, 3), "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "overload_regression.json").write_text(json.dumps(result, indent=1))
    lines = [f"# The mesh at {args.clients} clients: {head_rev} against {base_rev}", "",
             f"`python bench/compare_revisions.py --base {args.base} --rounds {args.rounds} --clients {args.clients}"
             f" --duration {args.duration}` ({started}, {os.cpu_count()} CPUs, load at start "
             f"{result['meta']['loadavg_at_start']});"
             " the overload benchmark's mesh system (wrk, the gateway's fast route, one transaction a request), "
             "one run per revision per round, the order alternating.", "",
             "| revision | goodput/s median (min-max) | p99 ms median (min-max) |", "|---|---:|---:|"]
    for name, rev in (("base", base_rev), ("head", result["meta"]["head"])):
        g, p = summary[name]["goodput"], summary[name]["p99_ms"]
        lines.append(f"| {rev} | {g['median']:,.0f} ({g['min']:,.0f}-{g['max']:,.0f}) | "
                     f"{p['median']:.1f} ({p['min']:.1f}-{p['max']:.1f}) |")
    lines += ["", f"Goodput, head / base: **{ratio:.3f}**."]
    (args.out / "overload_regression.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
