"""The parts every scorer bento shares; a bento file is a subclass with its settings.

- ``predict_api``: the batchable predict endpoint (adaptive batching, or one request at a
  time when ``max_batch_size`` is 1: BentoML's batcher needs at least 2);
- ``ScorerBase``: fault injection, readiness, the extra Prometheus series;
- ``ModelScorer``: two slots that follow the registry (champion/challenger) and fall back to
  the bento's built-in model.

Nothing here imports xgboost or torch: the fallback scorer uses it too.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar

import bentoml
from bentoml.exceptions import NotFound
from pydantic import BaseModel, Field

from healmesh import rules
from healmesh.access import AccessGuard, scorer_policy, settings_tokens
from healmesh.errors import NoModel
from healmesh.heap import freeze_heap
from healmesh.schema import active as active_schema
from healmesh.serving import faults
from healmesh.serving.exposition import Family, render
from healmesh.serving.follower import AliasFollower
from healmesh.serving.slots import SLOTS, LoadedModel, ModelSlots, SlotName
from healmesh.settings import Settings, get_settings

log = logging.getLogger("healmesh.scorer")
# the request row of the project this process serves (the predict APIs below are typed with it)
Transaction = active_schema().transaction

PREDICT_ROUTES: dict[str, SlotName] = {"/predict": "stable", "/predict_canary": "canary"}


class Score(BaseModel):
    probability: float = Field(description="probability of the positive class, 0 to 1")
    label: int = Field(description="1 when probability >= the model's threshold")
    model: str
    model_version: str


def predict_api(slot: SlotName, *, max_batch_size: int, max_latency_ms: int) -> Any:
    """The predict endpoint for ``slot`` (``/predict`` or ``/predict_canary``)."""

    def predict(self: Any, rows: list[Transaction]) -> list[Score]:  # type: ignore[valid-type]
        return self.score(rows, slot)

    predict.__name__ = "predict" if slot == "stable" else "predict_canary"
    predict.__doc__ = f"Score transactions with the {slot} model. Body: {{\"rows\": [transaction, ...]}}."
    if max_batch_size >= 2:
        api = bentoml.api(batchable=True, max_batch_size=max_batch_size, max_latency_ms=max_latency_ms)(predict)
    else:
        api = bentoml.api(predict)
    # BentoML derives a list output's media type from its JSON schema on every response
    # (13 % of a scorer's CPU under load, measured with py-spy); it is always JSON here.
    api.output_spec.media_type = "application/json"
    return api


def service_config(settings: Settings) -> dict[str, Any]:
    """BentoML service options every scorer shares (see Settings for why each is set)."""
    config: dict[str, Any] = {
        "workers": 1,  # fault state and slots are per process: one worker per scorer server
        "traffic": {"timeout": 30},
        "logging": {"access": {"enabled": settings.scorer_access_log}},
    }
    if not settings.scorer_tracing:
        config["tracing"] = {"excluded_urls": list(PREDICT_ROUTES)}
    return config


def with_fault_hook(service: Any) -> Any:
    """Install the access guard (outermost: credentials and body sizes before anything reads a
    body) and the fault-injection middleware on a decorated scorer service."""
    service.add_asgi_middleware(AccessGuard, policy=scorer_policy(get_settings().max_body_bytes),
                                tokens=settings_tokens)
    service.add_asgi_middleware(faults.FaultMiddleware, routes=PREDICT_ROUTES, injector=faults.INJECTOR)
    return service


class ScorerBase:
    scorer_name: ClassVar[str]

    def __init__(self) -> None:
        self.settings: Settings = get_settings()
        self.faults = faults.INJECTOR
        if not self.settings.admin_token:
            log.info("%s: admin API disabled (HEALMESH_ADMIN_TOKEN not set)", self.scorer_name)

    def score(self, rows: Sequence[BaseModel], slot: SlotName) -> list[Score]:
        raise NotImplementedError

    def __is_ready__(self) -> bool:
        return not self.faults.config.fail_readyz

    def state(self) -> dict[str, Any]:
        return {"scorer": self.scorer_name, "faults": self.faults.snapshot()}

    def metric_families(self) -> list[Family]:
        cfg = self.faults.config
        who = {"scorer": self.scorer_name}
        return [
            Family("healmesh_fault_error_rate", "gauge", "Injected error rate (0 when fault injection is off).",
                   ((who, cfg.error_rate),)),
            Family("healmesh_fault_latency_ms", "gauge", "Injected latency per predict request.",
                   ((who, cfg.latency_ms),)),
            Family("healmesh_fault_injected_errors_total", "counter", "Predict requests failed on purpose.",
                   ((who, self.faults.injected_errors),)),
        ]

    def __metrics__(self, content: str) -> str:
        return content + render(self.metric_families())

    @bentoml.on_startup  # BentoML finds startup hooks through dir(): inherited ones count
    def _freeze(self) -> None:
        freeze_heap()


class ModelScorer(ScorerBase):
    """A scorer of registry models with a stable and a canary slot."""

    model_kind: ClassVar[str]  # "xgboost" | "mlp"
    builtin_model: ClassVar[Any]  # bentoml.models.BentoModel (None: registry only), resolved on first use

    def __init__(self) -> None:
        super().__init__()
        self.slots = ModelSlots()
        self.follower = AliasFollower(self.slots, self.settings, self.registered_name(), self.model_kind,
                                      self._load_builtin)
        self.follower.sync()
        if self.slots.get("stable") is None:
            raise NoModel(
                f"{self.scorer_name}: no model to serve: the registry at {self.settings.tracking_uri} has no "
                f"'{self.settings.champion_alias}' for {self.registered_name()} and the BentoML store has no "
                f"built-in model ({self.follower.status.last_error}). Run `healmesh train` first."
            )
        self.follower.start()

    def registered_name(self) -> str:
        s = self.settings
        return s.xgb_registered_name if self.model_kind == "xgboost" else s.mlp_registered_name

    def _load_builtin(self) -> LoadedModel | None:
        from healmesh import bento_store
        from healmesh.models.bundle import load_bundle

        if self.builtin_model is None:
            return None
        stored = bento_store.describe(self.builtin_model)
        bundle = load_bundle(stored.path)
        version = stored.registry_version or stored.tag.split(":", 1)[1]
        return LoadedModel(bundle=bundle, model=self.model_kind, version=version, source="builtin")

    def score(self, rows: Sequence[BaseModel], slot: SlotName) -> list[Score]:
        loaded = self.slots.get(slot)  # read once: a swap mid-batch does not split the batch
        if loaded is None:
            raise NotFound(f"no model in the {slot} slot")
        probs = loaded.bundle.predict_records([r.model_dump() for r in rows])
        threshold = loaded.threshold
        return [Score(probability=float(p), label=int(p >= threshold), model=loaded.model,
                      model_version=loaded.version) for p in probs]

    def __is_ready__(self) -> bool:
        return super().__is_ready__() and self.slots.get("stable") is not None

    def state(self) -> dict[str, Any]:
        status = self.follower.status
        return {**super().state(), "registered_name": self.registered_name(), "slots": self.slots.describe(),
                "registry": {"uri": self.settings.tracking_uri, "reachable": status.registry_reachable,
                             "last_sync": status.last_sync, "last_error": status.last_error,
                             "syncs": status.syncs, "failures": status.failures}}

    def metric_families(self) -> list[Family]:
        who = {"scorer": self.scorer_name}
        info, loaded_at, swaps = [], [], []
        for slot in SLOTS:
            m = self.slots.get(slot)
            swaps.append(({**who, "slot": slot}, float(self.slots.swaps[slot])))
            if m is not None:
                info.append(({**who, "slot": slot, "model": m.model, "version": m.version, "source": m.source}, 1.0))
                loaded_at.append(({**who, "slot": slot}, m.loaded_at))
        status = self.follower.status
        return super().metric_families() + [
            Family("healmesh_model_info", "gauge", "The model version each slot serves (value 1).", tuple(info)),
            Family("healmesh_model_loaded_timestamp_seconds", "gauge", "When the slot's model was loaded.",
                   tuple(loaded_at)),
            Family("healmesh_model_swaps_total", "counter", "Model changes per slot since start.", tuple(swaps)),
            Family("healmesh_registry_reachable", "gauge", "1 when the last registry sync reached MLflow.",
                   ((who, float(status.registry_reachable)),)),
            Family("healmesh_registry_sync_failures_total", "counter", "Registry syncs that failed.",
                   ((who, float(status.failures)),)),
        ]

    @bentoml.on_shutdown
    def _stop_follower(self) -> None:
        self.follower.stop()


class RulesScorer(ScorerBase):
    """The fallback: the interpretable rule score, no ML framework."""

    def __init__(self) -> None:
        super().__init__()
        # the project's rules (or the ones training distilled), read once at start
        self.ruleset = rules.active()

    def score(self, rows: Sequence[BaseModel], slot: SlotName) -> list[Score]:
        rs = self.ruleset
        probs = rs.score_records([r.model_dump() for r in rows])
        return [Score(probability=float(p), label=int(p >= rs.threshold), model=rules.MODEL_NAME,
                      model_version=rs.version) for p in probs]

    def state(self) -> dict[str, Any]:
        return {**super().state(), "slots": {"stable": {"model": rules.MODEL_NAME, "version": self.ruleset.version}}}
