"""Counter evidence for one canary stage that survives gateway restarts. Pure: scrapes in,
non-negative increases out; no clock and no I/O (the caller gives the stage's start time).

A scrape comes from one gateway server, whose live workers each export
``healmesh_gateway_instance_start_time_seconds{instance_id=...}``. The server's counters are the
sum over its workers and start from 0 when the server restarts, so a plain ``after - before``
goes negative, and a restart with more traffic than before hides the drop (the issue's case:
``{ok: 100, err: 60}``, restart, ``{ok: 400, err: 50}`` read as -10 errors in 300 calls).

Per source (a set of instance ids; a scrape that shares an id with a known source is that source,
so one worker restarting inside a server keeps its baseline):
- a source seen before: each series adds ``value - last``, or ``value`` when it dropped (a reset,
  as Prometheus's ``increase()`` counts it);
- a new source whose instances all started after the stage began counts from 0 (all its counts
  belong to the stage);
- a new source with an instance started before the stage has its first scrape as baseline.
Every reset is returned and kept, so the stage can record it.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from healmesh.policies.canary import (
    CALLS,
    LATENCY,
    Samples,
    UpstreamStats,
    parse_metrics,
    stats_from_increases,
)

INSTANCE_START = "healmesh_gateway_instance_start_time_seconds"
COUNTERS: tuple[str, ...] = (CALLS, LATENCY)


@dataclass(frozen=True)
class Scrape:
    instances: Mapping[str, float]  # instance id -> start time (unix seconds); empty when not exported
    samples: Samples

    @classmethod
    def parse(cls, text: str, names: Collection[str] = COUNTERS) -> Scrape:
        parsed = parse_metrics(text)
        instances = {dict(labels).get("instance_id", ""): value for (name, labels), value in parsed.items()
                     if name == INSTANCE_START}
        return cls(instances={k: v for k, v in instances.items() if k},
                   samples={key: v for key, v in parsed.items() if key[0] in names})


class ResetKind(StrEnum):
    NEW_INSTANCE = "new_instance"  # a gateway server started during the stage: counted from 0
    COUNTER_DROP = "counter_drop"  # a series went down: it restarted from 0


@dataclass(frozen=True)
class Reset:
    kind: ResetKind
    detail: str

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "detail": self.detail}


@dataclass
class _Source:
    ids: frozenset[str]
    last: Samples = field(default_factory=dict)


def _series(key: tuple[str, frozenset[tuple[str, str]]]) -> str:
    name, labels = key
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels)) + "}"


class CounterEvidence:
    """Accumulates the increases of counter series over a stage, source by source."""

    def __init__(self, stage_started_at: float) -> None:
        self.stage_started_at = stage_started_at
        self._sources: list[_Source] = []
        self._totals: Samples = {}
        self._resets: list[Reset] = []

    @property
    def totals(self) -> Samples:
        return dict(self._totals)

    @property
    def resets(self) -> tuple[Reset, ...]:
        return tuple(self._resets)

    def add(self, scrape: Scrape) -> tuple[Reset, ...]:
        """Take one scrape; returns the resets it revealed."""
        ids = frozenset(scrape.instances)
        source = next((s for s in self._sources if s.ids & ids or s.ids == ids), None)
        found: list[Reset] = []
        if source is None:
            started_in_stage = bool(ids) and all(t >= self.stage_started_at for t in scrape.instances.values())
            source = _Source(ids=ids, last={} if started_in_stage else dict(scrape.samples))
            self._sources.append(source)
            if started_in_stage:
                found.append(Reset(ResetKind.NEW_INSTANCE, f"gateway instance {', '.join(sorted(ids))} started "
                                                           "during the stage: its counters count from 0"))
            else:
                return ()  # the baseline: nothing counted yet
        for key, value in scrape.samples.items():
            last = source.last.get(key, 0.0)
            if value >= last:
                increase = value - last
            else:
                increase = value
                found.append(Reset(ResetKind.COUNTER_DROP, f"{_series(key)} went from {last:g} to {value:g}"))
            self._totals[key] = self._totals.get(key, 0.0) + increase
        source.ids = ids
        source.last.update(scrape.samples)  # a series missing from one scrape keeps its last value
        self._resets.extend(found)
        return tuple(found)


def upstream_stats(before: Samples, after: Samples, upstream: str) -> UpstreamStats:
    """Stats between two scrapes of one source; a counter that dropped restarted from 0."""
    evidence = CounterEvidence(stage_started_at=math.inf)
    evidence.add(Scrape(instances={}, samples=before))
    evidence.add(Scrape(instances={}, samples=after))
    return stats_from_increases(evidence.totals, upstream)
