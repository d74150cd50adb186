"""The gateway's HTTP API (FastAPI, mounted by the BentoML service at ``/api/v1``).

- ``POST /predict`` (public): one transaction (object) or a batch (list). 400 malformed JSON,
  413 too large (bytes or rows), 415 not JSON, 422 naming every bad field. A refused request
  does no work and leaves no trace. 503 + Retry-After only when the gateway itself is full.
- ``POST /feedback``, ``/feedback/batch`` (labeller or admin token): true labels of answered
  requests; past Redis's hot window a label is stored cold (``stored_cold``) for the archive;
  410 once the archive's retention has passed.
- ``POST /alerts`` (alerts or admin token): Alertmanager's webhook; each alert becomes a
  lifecycle event (``alert_firing`` / ``alert_resolved``) on the status page.
- ``/admin/...`` (admin token): weights, shadow, rollout, label corrections, audit, state.

Credentials and body sizes are checked before any of this runs (``healmesh.access``).
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, FastAPI, Header, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError

from healmesh import registry, schema
from healmesh.access import Access, RequestRejected, loads_strict, requires
from healmesh.control import events, keys
from healmesh.control.state import (
    ChangeConflict,
    ChangeRejected,
    Rollout,
    RolloutStatus,
    Shadow,
    check_rollout,
)
from healmesh.errors import Unavailable
from healmesh.gateway import alerts as alert_webhook
from healmesh.gateway.core import GatewayCore, Saturated
from healmesh.gateway.feature_log import LabelResult
from healmesh.policies import routing
from healmesh.policies.rollout import ACTIVE
from healmesh.policies.routing import Weights, WeightsError
from healmesh.settings import get_settings

ApiError = RequestRejected  # what the request parsers raise: status, error, detail
WORKER_HEADER = b"x-healmesh-worker"


def parse_predict_body(raw: bytes, max_rows: int) -> tuple[list[dict[str, Any]], bool]:
    """Validated rows and whether the body was a single object. Raises ``ApiError``."""
    body = loads_strict(raw)
    single = isinstance(body, dict)
    if single:
        items = [body]
    elif isinstance(body, list):
        items = body
        if not items:
            raise ApiError(422, "an empty batch", [{"field": None, "loc": ["body"], "msg": "the list is empty",
                                                  "type": "too_short"}])
        if len(items) > max_rows:
            raise ApiError(413, f"a batch holds at most {max_rows} transactions, this one has {len(items)}")
    else:
        raise ApiError(422, "the body must be a transaction object or a list of them",
                       [{"field": None, "loc": ["body"], "msg": f"got {type(body).__name__}", "type": "type_error"}])
    rows: list[dict[str, Any]] = []
    errors: list[dict[str, Any]] = []
    transaction = schema.active().transaction
    for i, item in enumerate(items):
        where: list[Any] = ["body"] if single else ["body", i]
        if not isinstance(item, dict):
            errors.append({"field": None, "loc": where, "msg": "a transaction must be an object", "type": "type_error"})
            continue
        try:
            rows.append(transaction.model_validate(item).model_dump())
        except ValidationError as exc:
            for e in exc.errors(include_url=False, include_context=False, include_input=False):
                field = str(e["loc"][0]) if e["loc"] else None
                errors.append({"field": field, "loc": [*where, *e["loc"]], "msg": e["msg"], "type": e["type"]})
    if errors:
        raise ApiError(422, "invalid transaction", errors)
    return rows, single


async def read_limited(request: Request, limit: int) -> bytes:
    """The body, refusing past ``limit`` bytes (the access guard checked it already)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the body is larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def answer_predict(core: GatewayCore, raw: bytes, max_rows: int) -> tuple[int, bytes, dict[str, str]]:
    """Status, JSON body and headers for one predict call (shared by both entry points)."""
    try:
        rows, single = parse_predict_body(raw, max_rows)
    except ApiError as exc:
        body: dict[str, Any] = {"error": exc.error}
        if exc.detail is not None:
            body["detail"] = exc.detail
        return exc.status, json.dumps(body).encode(), {}
    try:
        out, _ = await core.predict(rows, core.entity_of(rows[0]))
    except Saturated as exc:
        return shed_answer(exc)
    return 200, json.dumps(out[0] if single else out).encode(), {}


def shed_answer(exc: Saturated) -> tuple[int, bytes, dict[str, str]]:
    """503 with Retry-After in whole seconds (at least 1): the caller uses its own default now."""
    return 503, b'{"error": "gateway saturated"}', {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}


class PredictFastPath:
    """ASGI middleware answering ``POST /api/v1/predict`` before routing; every answer that
    passes it names the worker that gave it (``x-healmesh-worker``).

    Measured with py-spy at ~1,000 req/s: BentoML's context middleware, Starlette's router and
    mount, and FastAPI's own middleware and dependency stack took more CPU than the gateway's
    work. The other routes (feedback, admin, OpenAPI) keep going through FastAPI."""

    def __init__(self, app: Any, path: str = "/api/v1/predict") -> None:
        self.app = app
        self.path = path
        self.settings = get_settings()
        self._worker: tuple[bytes, bytes] | None = None

    def worker_header(self) -> list[tuple[bytes, bytes]]:
        """``x-healmesh-worker: <instance id>``: which worker of the server answered (the id
        its metrics and ``GET /api/v1/admin/state`` carry)."""
        if self._worker is None:
            try:
                self._worker = (WORKER_HEADER, current_core().metrics.instance_id.encode())
            except Exception:  # no core yet (not served by BentoML, or still starting)
                return []
        return [self._worker]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] != self.path or scope["method"] != "POST":
            named = self.worker_header()

            async def send_named(message: Any) -> None:
                if message["type"] == "http.response.start":
                    message = {**message, "headers": [*message.get("headers", ()), *named]}
                await send(message)

            await self.app(scope, receive, send_named)
            return
        status, payload, headers = await self._answer(scope, receive)
        raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                       *self.worker_header()]
        raw_headers += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": payload})

    async def _answer(self, scope: Any, receive: Any) -> tuple[int, bytes, dict[str, str]]:
        core = current_core()
        shed = core.saturated()
        if shed is not None:  # past the admission limit: refused before the body is read or parsed
            core.count_shed("admission")
            return shed_answer(shed)
        limit = self.settings.max_body_bytes
        too_large: tuple[int, bytes, dict[str, str]] = (
            413, json.dumps({"error": f"the body is larger than {limit} bytes"}).encode(), {})
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                return too_large
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return 400, b'{"error": "client disconnected"}', {}
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return too_large
            chunks.append(chunk)
            more = message.get("more_body", False)
        return await answer_predict(core, b"".join(chunks), self.settings.max_batch_rows)


# --- response and admin models (they also make the OpenAPI document) ---------------------------

class PredictAnswer(BaseModel):
    request_id: str
    probability: float
    label: int
    model: str
    model_version: str
    variant: str
    fallback: bool
    degraded: bool
    latency_ms: float


REQUEST_ID = Field(pattern=keys.REQUEST_ID.pattern, description="the request_id of a /predict answer")
LABEL = Field(ge=0, le=1, strict=True, description="the true label: 1 the positive class, 0 the other (an integer)")
WHY = Field(min_length=1, max_length=500, description="why this change (kept in the audit trail)")
WHO = Field(default=None, max_length=100, description="who asks (default: the X-Healmesh-Actor header)")
EXPECTED = Field(default=None, ge=0, description="refuse (409) unless the control state is at this version")


class Feedback(BaseModel):
    request_id: str = REQUEST_ID
    label: int = LABEL


class LabelCorrection(BaseModel):
    label: int = LABEL
    why: str = WHY
    who: str | None = WHO


class WeightsChange(BaseModel):
    weights: dict[str, float] = Field(description=f"variant -> weight; variants: {', '.join(routing.VARIANTS)}")
    why: str = WHY
    who: str | None = WHO
    expected_version: int | None = EXPECTED


class ShadowChange(BaseModel):
    enabled: bool
    target: routing.Variant = routing.PYTORCH
    why: str = WHY
    who: str | None = WHO
    expected_version: int | None = EXPECTED


class RolloutChange(BaseModel):
    stage: int = Field(ge=0, le=100, strict=True, description="percent of the XGBoost share served by the canary: "
                                                              "0, or one of the configured canary stages")
    canary_version: str | None = Field(default=None, pattern=r"^[0-9]{1,9}$",
                                       description="a registered version of the XGBoost model")
    status: RolloutStatus = RolloutStatus.RUNNING
    note: str = Field(default="", max_length=500)
    why: str = WHY
    who: str | None = WHO
    expected_version: int | None = EXPECTED


def current_core() -> GatewayCore:
    import bentoml

    return bentoml.get_current_service().core


def _who(body_who: str | None, header: str | None) -> str:
    return body_who or header or "admin-api"


def _unavailable(what: str, cause: BaseException | str, retry_after_s: int = 1) -> Unavailable:
    """The one 503 for a store or service that did not answer (the app's handler renders it as
    ``{"detail": "<what> is unavailable: <cause>"}`` with ``Retry-After``); an exception as the
    cause is named by its type only: its text may hold addresses or keys."""
    return Unavailable(what, cause if isinstance(cause, str) else type(cause).__name__, retry_after_s)


def _invalid(field: str, msg: str) -> RequestRejected:
    return RequestRejected(422, msg, [{"field": field, "loc": ["body", *field.split(".")], "msg": msg,
                                       "type": "value_error"}])


PREDICT_BODY = {
    "required": True,
    "content": {"application/json": {"schema": {
        "oneOf": [{"$ref": "#/components/schemas/Transaction"},
                  {"type": "array", "items": {"$ref": "#/components/schemas/Transaction"}, "minItems": 1}]}}},
}
LABEL_STATUS = {LabelResult.UNKNOWN: 404, LabelResult.CONFLICT: 409, LabelResult.EXPIRED: 410}


def build_app() -> FastAPI:
    settings = get_settings()
    app = FastAPI(title="healmesh gateway", version="1", description=__doc__)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return JSONResponse({"error": "malformed JSON"}, status_code=400)
        detail = [{"field": ".".join(str(x) for x in e["loc"][1:]) if len(e.get("loc", ())) > 1 else None,
                   "loc": list(e.get("loc", [])), "msg": e.get("msg"), "type": e.get("type")} for e in errors]
        return JSONResponse({"error": "invalid request", "detail": detail}, status_code=422)

    @app.exception_handler(Unavailable)
    async def _unavailable_answer(_: Request, exc: Unavailable) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": str(exc.retry_after_s)})

    @app.exception_handler(RequestRejected)
    async def _rejected(_: Request, exc: RequestRejected) -> Response:
        return Response(exc.body(), status_code=exc.status, media_type="application/json", headers=exc.headers)

    @app.post("/predict", response_model=PredictAnswer | list[PredictAnswer],
              openapi_extra={"requestBody": PREDICT_BODY},
              responses={400: {"description": "malformed JSON"}, 413: {"description": "too large"},
                         415: {"description": "not JSON"}, 422: {"description": "invalid fields, each named"},
                         503: {"description": "gateway saturated; retry after the Retry-After seconds"}})
    async def predict(request: Request) -> Any:
        """Score one transaction (object) or a batch (list). Never 5xx while any path works.

        In the served gateway `PredictFastPath` answers this route before FastAPI routing (the
        same `answer_predict`); this handler documents it and serves it when that is absent."""
        raw = await read_limited(request, settings.max_body_bytes)
        status, payload, headers = await answer_predict(current_core(), raw, settings.max_batch_rows)
        return Response(payload, status_code=status, headers=headers, media_type="application/json")

    labeller = APIRouter(dependencies=[Depends(requires(Access.LABELLER))])

    @labeller.post("/feedback", responses={401: {"description": "no labeller (or admin) token"},
                                           404: {"description": "unknown request id"},
                                           409: {"description": "a different label is already stored"},
                                           410: {"description": "answered longer ago than the label retention"},
                                           503: {"description": "the feature store is unavailable"}})
    async def feedback(fb: Feedback) -> dict[str, Any]:
        """Attach the true label to an answered request (idempotent for the same label; a
        different label later is a conflict: an admin corrects it with PUT /admin/labels/{id})."""
        core = current_core()
        try:
            result = await core.feature_log.label(fb.request_id, fb.label)
        except Exception as exc:  # Redis away: refuse rather than pretend
            raise _unavailable("the feature store", exc) from None
        core.metrics.labels.labels(result.value).inc()
        if result in LABEL_STATUS:
            raise HTTPException(LABEL_STATUS[result], _label_message(result, fb.request_id, settings.label_limit_s))
        return {"request_id": fb.request_id, "label": fb.label, "status": result.value}

    @labeller.post("/feedback/batch", responses={401: {"description": "no labeller (or admin) token"},
                                                 503: {"description": "the feature store is unavailable"}})
    async def feedback_batch(items: Annotated[list[Feedback], Body(max_length=1_000)]) -> dict[str, Any]:
        """Up to 1,000 labels at once (one Redis round trip); per item the same rules as
        POST /feedback. The answer counts each result and lists the ids that were not stored."""
        core = current_core()
        try:
            results = await core.feature_log.labels([(fb.request_id, fb.label) for fb in items])
        except Exception as exc:
            raise _unavailable("the feature store", exc) from None
        out: dict[str, Any] = {"stored": 0, "stored_cold": 0, "unchanged": 0, "unknown": [], "conflicts": [],
                               "expired": []}
        for fb, result in zip(items, results, strict=True):
            core.metrics.labels.labels(result.value).inc()
            if result in (LabelResult.STORED, LabelResult.STORED_COLD, LabelResult.UNCHANGED):
                out[result.value] += 1
            else:
                out[{LabelResult.UNKNOWN: "unknown", LabelResult.CONFLICT: "conflicts",
                     LabelResult.EXPIRED: "expired"}[result]].append(fb.request_id)
        return out

    app.include_router(labeller)
    alerting = APIRouter(dependencies=[Depends(requires(Access.ALERTS))])

    @alerting.post("/alerts", responses={401: {"description": "no alerts (or admin) token"},
                                         422: {"description": "not an Alertmanager notification: the field named"},
                                         503: {"description": "the event store is unavailable (Alertmanager retries)"}})
    async def alerts(hook: alert_webhook.AlertmanagerWebhook) -> dict[str, Any]:
        """Alertmanager's webhook receiver (version 4). Each alert is recorded as a lifecycle event
        (`alert_firing` / `alert_resolved`, shown on /ui) once per fingerprint, status and
        startsAt: Alertmanager's repeats and retries record nothing more."""
        core, prefix = current_core(), settings.key_prefix
        recorded = 0
        try:
            for ev in alert_webhook.events(hook):
                recorded += await events.record_once(core.redis, prefix, alert_webhook.marker_key(prefix, ev),
                                                     alert_webhook.MARKER_TTL_S, ev.kind, ev.message, **ev.data)
        except Exception as exc:  # Redis away: a 503 makes Alertmanager retry; what was recorded stays once
            raise _unavailable("the event store", exc) from None
        return {"alerts": len(hook.alerts), "recorded": recorded}

    app.include_router(alerting)
    admin = APIRouter(prefix="/admin", dependencies=[Depends(requires(Access.ADMIN))])

    @admin.get("/state")
    async def state() -> dict[str, Any]:
        core = await _read_your_writes()
        return core.describe()

    @admin.get("/weights")
    async def get_weights() -> dict[str, Any]:
        core = await _read_your_writes()
        return {"weights": core.state.weights.as_dict(), "effective": core.effective_weights()}

    @admin.put("/weights", responses={409: {"description": "canary weight with no rollout running, or a stale "
                                                           "expected_version"},
                                      422: {"description": "invalid weights"}})
    async def set_weights(change: WeightsChange, x_healmesh_actor: str | None = Header(default=None)) -> dict[str, Any]:
        try:
            weights = Weights.parse(change.weights)
        except WeightsError as exc:
            raise _invalid(exc.field or "weights", str(exc)) from None
        return await _change(current_core(), "weights", weights, change.expected_version,
                             _who(change.who, x_healmesh_actor), change.why)

    @admin.get("/shadow")
    async def get_shadow() -> dict[str, Any]:
        return (await _read_your_writes()).state.describe()["shadow"]

    @admin.put("/shadow", responses={409: {"description": "the target's slot serves no model"}})
    async def set_shadow(change: ShadowChange, x_healmesh_actor: str | None = Header(default=None)) -> dict[str, Any]:
        core = current_core()
        if change.enabled and change.target == routing.XGB_CANARY:
            await _canary_slot_serves(core, None)
        value = Shadow(enabled=change.enabled, target=change.target)
        return await _change(core, "shadow", value, change.expected_version, _who(change.who, x_healmesh_actor),
                             change.why)

    @admin.get("/rollout")
    async def get_rollout() -> dict[str, Any]:
        return (await _read_your_writes()).state.describe()["rollout"]

    @admin.put("/rollout", responses={409: {"description": "illegal status change, or the canary slot does not "
                                                           "serve the version"},
                                      422: {"description": "invalid rollout: stage, version or status"}})
    async def set_rollout(change: RolloutChange, x_healmesh_actor: str | None = Header(default=None)) -> dict[str, Any]:
        core = current_core()
        try:
            value = Rollout(stage=change.stage, canary_version=change.canary_version, status=change.status,
                            note=change.note)
            check_rollout(value, get_settings().canary.stages)  # before asking anyone anything
        except ChangeRejected as exc:
            raise _invalid(exc.field or "rollout", str(exc)) from None
        if value.status in ACTIVE and value.canary_version:
            await _version_registered(value.canary_version)
            await _canary_slot_serves(core, value.canary_version)
        return await _change(core, "rollout", value, change.expected_version, _who(change.who, x_healmesh_actor),
                             change.why)

    @admin.put("/labels/{request_id}", responses={404: {"description": "unknown request id"},
                                                  410: {"description": "answered longer ago than the retention"}})
    async def correct_label(change: LabelCorrection, request_id: str = Path(pattern=keys.REQUEST_ID.pattern),
                            x_healmesh_actor: str | None = Header(default=None)) -> dict[str, Any]:
        """Correct a stored label (a chargeback reversed): audited with who and why."""
        core = current_core()
        who = _who(change.who, x_healmesh_actor)
        try:
            result = await core.feature_log.correct(request_id, change.label, who=who, why=change.why)
        except Exception as exc:
            raise _unavailable("the feature store", exc) from None
        core.metrics.labels.labels(result.value).inc()
        if result in LABEL_STATUS:
            raise HTTPException(LABEL_STATUS[result], _label_message(result, request_id, settings.label_retention_s))
        return {"request_id": request_id, "label": change.label, "status": result.value}

    @admin.get("/audit")
    async def audit(limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
        try:
            return await current_core().control.audit(limit)
        except Exception as exc:
            raise _unavailable("the control store", exc) from None

    app.include_router(admin)
    _install_schema_components(app)
    return app


def _label_message(result: LabelResult, request_id: str, retention_s: int) -> str:
    if result is LabelResult.EXPIRED:
        return (f"request {request_id!r} was answered more than {retention_s} s ago, beyond the label retention "
                "(HEALMESH_ARCHIVE__RETENTION_S, or HEALMESH_LABEL_RETENTION_S without the archive): its features "
                "are no longer kept, so the label cannot be used")
    if result is LabelResult.CONFLICT:
        return (f"request {request_id!r} already has a different label; an admin corrects labels with "
                f"PUT /api/v1/admin/labels/{request_id}")
    return f"unknown request_id {request_id!r} (never answered, or not logged yet: retry in a second)"


async def _version_registered(version: str) -> None:
    """422 unless the XGBoost model has this version in the registry (503 when it cannot tell)."""
    settings = get_settings()
    known = await asyncio.to_thread(registry.version_exists, settings, settings.xgb_registered_name, version)
    if known is None:
        raise _unavailable("the model registry", "cannot check canary_version", retry_after_s=5)
    if not known:
        raise _invalid("canary_version", f"{settings.xgb_registered_name} has no version {version!r}")


async def _canary_slot_serves(core: GatewayCore, version: str | None) -> None:
    """409 unless the XGBoost scorer's canary slot serves ``version`` (any model when None)."""
    slots = await core.scorer_slots("xgboost")
    if slots is None:
        raise _unavailable("the XGBoost scorer's admin API", "cannot check its canary slot", retry_after_s=5)
    serving = (slots.get("canary") or {}).get("version")
    if serving is None or (version is not None and serving != version):
        want = f"v{version}" if version else "a model"
        raise HTTPException(409, f"the XGBoost scorer's canary slot serves {('v' + serving) if serving else 'nothing'}"
                                 f", not {want}: set the `challenger` alias and reload the scorer first")


async def _read_your_writes() -> GatewayCore:
    """An admin read answers the latest change, whichever worker made it: this worker reads Redis
    first rather than waiting for its next poll (a DAG's PUT then GET could otherwise land on the
    other worker and see the state before the PUT, for up to ``control_poll_s``). With Redis away
    it answers the state it holds (routing keeps using that too)."""
    core = current_core()
    await core.refresh_control()
    return core


async def _change(core: GatewayCore, what: str, value: Any, expected_version: int | None, who: str,
                  why: str) -> dict[str, Any]:
    settings = get_settings()
    try:
        new = await core.control.change(what, value, who=who, why=why, expected_version=expected_version,
                                        stages=settings.canary.stages)
    except ChangeRejected as exc:  # WeightsError and RolloutRejected too
        raise _invalid(exc.field or what, str(exc)) from None
    except ChangeConflict as exc:
        raise HTTPException(409, str(exc)) from None
    except Exception as exc:
        raise _unavailable("the control store", exc) from None
    core.state = new  # this worker at once; the others within control_poll_s
    return new.describe()


def _install_schema_components(app: FastAPI) -> None:
    """Put the Transaction schema into the OpenAPI components the predict body refers to."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        spec = original()
        tx = schema.active().transaction.model_json_schema(ref_template="#/components/schemas/{model}")
        spec.setdefault("components", {}).setdefault("schemas", {})["Transaction"] = tx
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]
