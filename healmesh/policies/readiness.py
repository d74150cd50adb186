"""When the gateway may take traffic (its ``/readyz``), and when it should be restarted (``/livez``).

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

Liveness: a gateway server short of its workers for longer than a grace period is not alive
(a dead worker that nobody replaces, as in BentoML's container images, would otherwise leave it
on half its workers for good); unknown counts never make it dead.

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


def workers_alive(running: int | None, expected: int, short_since: float | None, *, now: float,
                  grace_s: float) -> tuple[Verdict, float | None]:
    """``running`` workers of ``expected`` (None: unknown). Returns the verdict and when the
    shortage began (None while there is none), to pass back in next time."""
    if running is None or running >= expected:
        return Verdict(True, f"{running if running is not None else '?'} of {expected} workers running"), None
    since = now if short_since is None else short_since
    short_for = now - since
    if short_for < grace_s:
        return Verdict(True, f"{running} of {expected} workers running for {short_for:.0f} s "
                             f"(dead after {grace_s:.0f} s)"), since
    return Verdict(False, f"{running} of {expected} workers running for {short_for:.0f} s: "
                          "a dead worker was not replaced"), since
