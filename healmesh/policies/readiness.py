"""When the gateway may take traffic: its ``/readyz``.

A gateway whose scorers are still starting answers every request from the fallback (measured:
`bentoml serve` of the mesh said ready 4 s in, and its first answers came from the fallback
scorer, 731 ms each, until the model scorers came up about 10 s later). So readiness means the
model variants answer:

- starting: ready once every variant with routing weight has answered a real prediction;
- a variant that never comes up does not hold the gateway back forever: after ``grace_s`` one
  answering variant is enough (its share fails over; the reason says what is missing);
- once ready, the gateway stays ready while at least one weighted variant answers: a dead
  scorer is the breakers' business, not a reason to pull the gateway out of a load balancer;
- no weighted variant answering: not ready, and the reason names each variant and why.

Pure: the probe results and the clock come in, a verdict goes out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    ready: bool
    reason: str


def decide(weights: Mapping[str, float], answering: Mapping[str, str | None], *, started_at: float, now: float,
           grace_s: float, was_ready: bool) -> Verdict:
    """``answering``: variant -> None when it answered its last check, else why not."""
    primary = sorted(v for v, w in weights.items() if w > 0)
    up = [v for v in primary if answering.get(v, "not checked yet") is None]
    down = {v: answering.get(v) or "not checked yet" for v in primary if v not in up}
    missing = "; ".join(f"{v}: {why}" for v, why in down.items())
    if not up:
        return Verdict(False, f"no model variant answers ({missing})" if primary else "no variant has weight")
    if not down:
        return Verdict(True, f"{', '.join(up)} answer")
    if was_ready or now - started_at >= grace_s:
        return Verdict(True, f"{', '.join(up)} answer; {missing}")
    return Verdict(False, f"starting: waiting for {missing} ({grace_s - (now - started_at):.0f} s of grace left)")
