"""Prometheus text exposition for the few gauges a scorer adds to BentoML's own metrics.

Written by hand and appended through the service's ``__metrics__`` hook: prometheus_client
objects would land in BentoML's multiprocess registry and be reported twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    name: str
    kind: str  # gauge | counter
    help: str
    samples: tuple[tuple[Mapping[str, str], float], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(families: Iterable[Family]) -> str:
    lines: list[str] = []
    for fam in families:
        lines.append(f"# HELP {fam.name} {fam.help}")
        lines.append(f"# TYPE {fam.name} {fam.kind}")
        for labels, value in fam.samples:
            label_text = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
            lines.append(f"{fam.name}{{{label_text}}} {float(value)!r}")
    return "\n".join(lines) + "\n"
