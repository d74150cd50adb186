"""Keeps a scorer's slots on the registry's aliases: champion -> stable, challenger -> canary.

Polls every ``alias_poll_s`` in a background thread (and on demand through the admin API).
A new version is downloaded and loaded *before* the swap; if anything fails, the slot keeps
what it serves and the error is recorded. An unreachable registry changes nothing: the
scorer goes on with its current models (at start-up: the bento's built-in model).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from healmesh import registry
from healmesh.models.bundle import find_bundle, load_bundle
from healmesh.serving.slots import SLOTS, LoadedModel, ModelSlots, SlotName
from healmesh.settings import Settings

log = logging.getLogger("healmesh.follower")


@dataclass
class FollowerStatus:
    registry_reachable: bool = False
    last_sync: float | None = None
    last_error: str | None = None
    syncs: int = 0
    failures: int = 0


class AliasFollower:
    def __init__(self, slots: ModelSlots, settings: Settings, registered_name: str, kind: str,
                 builtin: Callable[[], LoadedModel | None]) -> None:
        self.slots = slots
        self.settings = settings
        self.registered_name = registered_name
        self.kind = kind
        self._builtin = builtin
        self.status = FollowerStatus()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- one pass -----------------------------------------------------------------------
    def sync(self) -> FollowerStatus:
        with self._lock:
            try:
                self._sync_once()
                self.status.last_error = None
            except Exception as exc:  # never escapes: the scorer keeps serving what it has
                self.status.failures += 1
                self.status.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("registry sync failed for %s: %s", self.registered_name, self.status.last_error)
            finally:
                self.status.syncs += 1
                self.status.last_sync = time.time()
                if self.slots.get("stable") is None:
                    self._install_builtin()
            return self.status

    def _sync_once(self) -> None:
        reachable = registry.is_reachable(self.settings)
        self.status.registry_reachable = reachable
        if not reachable:
            return
        champion = registry.version_by_alias(self.settings, self.registered_name, self.settings.champion_alias)
        challenger = registry.version_by_alias(self.settings, self.registered_name, self.settings.challenger_alias)
        if champion is not None:
            self._follow("stable", champion.version)
        self._follow("canary", challenger.version if challenger else None)

    def _follow(self, slot: SlotName, version: str | None) -> None:
        current = self.slots.get(slot)
        if version is None:
            if current is not None:
                log.info("%s: %s slot emptied (no alias)", self.registered_name, slot)
                self.slots.put(slot, None)
            return
        if current is not None and current.source == "mlflow" and current.version == version:
            return
        loaded = self._reuse(version) or self._load(version).warm_up()
        self.slots.put(slot, loaded)
        log.info("%s: %s slot now serves version %s", self.registered_name, slot, version)

    def _reuse(self, version: str) -> LoadedModel | None:
        for slot in SLOTS:
            m = self.slots.get(slot)
            if m is not None and m.source == "mlflow" and m.version == version:
                return m
        return None

    def _load(self, version: str) -> LoadedModel:
        model_dir = registry.download_model(self.settings, self.registered_name, version)
        bundle = load_bundle(find_bundle(model_dir))
        return LoadedModel(bundle=bundle, model=self.kind, version=version, source="mlflow")

    def _install_builtin(self) -> None:
        try:
            builtin = self._builtin()
        except Exception as exc:
            self.status.last_error = f"built-in model: {type(exc).__name__}: {exc}"
            return
        if builtin is not None:
            self.slots.put("stable", builtin.warm_up())
            log.info("%s: serving the built-in model %s", self.registered_name, builtin.version)

    # --- background loop ------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=f"alias-follower-{self.kind}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.settings.alias_poll_s):
            self.sync()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
