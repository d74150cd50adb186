"""The decisions benchmark (issue 11): how often each of healmesh's statistical decisions is wrong,
by simulation on generated data with known truth. No servers; deterministic seeds.

    python bench/decisions_bench.py            # every part -> bench/results/decisions.{md,json}
    python bench/decisions_bench.py gate drift # some parts (the results file then holds only those)

Each part is a module of ``bench/decisions/`` with ``run() -> {"title", "lines", "checks"}``; a
check is {"requirement", "measured", "met"}. The summary at the top lists every check.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

PARTS = ("canary", "gate", "estimation", "drift")


def main(argv: list[str]) -> int:
    parts = tuple(argv) or PARTS
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        print(f"unknown part(s) {unknown}; choose from {PARTS}", file=sys.stderr)
        return 2
    sections: list[dict[str, Any]] = []
    for part in parts:
        started = time.perf_counter()
        section = importlib.import_module(f"bench.decisions.{part}").run()
        section["part"], section["seconds"] = part, round(time.perf_counter() - started, 1)
        sections.append(section)
        print(f"{part}: {section['seconds']} s", file=sys.stderr)
    checks = [(s["part"], c) for s in sections for c in s["checks"]]
    lines = ["# Decisions benchmark", "",
             f"`python bench/decisions_bench.py` ({', '.join(parts)}): simulation on generated data with known "
             "truth, no servers. Each part says what it simulated; the table below gathers every requirement.", "",
             "| part | requirement | measured | met |", "|---|---|---|---|"]
    lines += [f"| {p} | {c['requirement']} | {c['measured']} | {'yes' if c['met'] else '**no**'} |" for p, c in checks]
    for s in sections:
        lines += ["", f"## {s['title']}", "", f"_{s['seconds']} s_", "", *s["lines"]]
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "decisions.md").write_text("\n".join(lines) + "\n")
    (out / "decisions.json").write_text(json.dumps(sections, indent=2, default=str) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
