"""Two model slots per scorer: ``stable`` (the champion) and ``canary`` (the challenger).

A swap is one reference assignment. A batch reads its slot once and keeps that model for
the whole batch, so requests in flight finish on the model they started with.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

SlotName = Literal["stable", "canary"]
SLOTS: tuple[SlotName, ...] = ("stable", "canary")


@dataclass(frozen=True)
class LoadedModel:
    bundle: Any  # healmesh.models.bundle.Bundle (kept untyped: no model import here)
    model: str  # "xgboost" or "mlp"
    version: str  # the registry version, or the BentoML tag's version for a model never registered
    source: Literal["mlflow", "builtin"]
    loaded_at: float = field(default_factory=time.time)

    @property
    def threshold(self) -> float:
        return float(self.bundle.meta.threshold)

    def warm_up(self) -> LoadedModel:
        """One prediction before the model serves: its first call (lazy initialisation in the
        framework) is then not a client's."""
        from healmesh import schema

        self.bundle.predict_records([schema.active().example_row()])
        return self

    def describe(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "source": self.source,
                "threshold": self.threshold, "loaded_at": self.loaded_at,
                "device": str(getattr(self.bundle.model, "device", "cpu"))}


class ModelSlots:
    def __init__(self) -> None:
        self._slots: dict[SlotName, LoadedModel | None] = {"stable": None, "canary": None}
        self._lock = threading.Lock()
        self.swaps: dict[SlotName, int] = {"stable": 0, "canary": 0}
        # when each slot last changed (wall clock, after the swap): a request sent later is served by
        # the new model, whatever batch it joins
        self.changed_at: dict[SlotName, float | None] = {"stable": None, "canary": None}

    def get(self, slot: SlotName) -> LoadedModel | None:
        return self._slots[slot]

    def put(self, slot: SlotName, model: LoadedModel | None) -> LoadedModel | None:
        """Install ``model`` (None empties the slot); returns what was there."""
        with self._lock:
            old = self._slots[slot]
            self._slots[slot] = model
            self.changed_at[slot] = time.time()
            self.swaps[slot] += 1
            return old

    def describe(self) -> dict[str, Any]:
        return {name: ({**m.describe(), "since": self.changed_at[name]} if (m := self._slots[name]) else None)
                for name in SLOTS}
