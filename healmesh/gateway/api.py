"""The gateway's HTTP API (FastAPI, mounted by the BentoML service at ``/api/v1``).

- ``POST /predict``: one transaction (object) or a batch (list). 400 malformed JSON, 413 too
  large (bytes or rows), 422 naming every bad field. A refused request does no work and
  leaves no trace. 503 + Retry-After only when the gateway itself is saturated.
- ``POST /feedback``: the true label of an answered request.
- ``/admin/...``: weights, shadow, rollout, audit, state; bearer token required.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, ValidationError

from healmesh import schema
from healmesh.gateway.control import Rollout, RolloutStatus, Shadow
from healmesh.gateway.core import GatewayCore, Saturated
from healmesh.policies import routing
from healmesh.policies.routing import Weights, WeightsError
from healmesh.serving.admin import require_token
from healmesh.settings import get_settings


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: Any = None) -> None:
        self.status, self.error, self.detail = status, error, detail


def parse_predict_body(raw: bytes, max_rows: int) -> tuple[list[dict[str, Any]], bool]:
    """Validated rows and whether the body was a single object. Raises ``ApiError``."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"malformed JSON: {exc}") from None
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
    for i, item in enumerate(items):
        where: list[Any] = ["body"] if single else ["body", i]
        if not isinstance(item, dict):
            errors.append({"field": None, "loc": where, "msg": "a transaction must be an object", "type": "type_error"})
            continue
        try:
            rows.append(schema.Transaction.model_validate(item).model_dump())
        except ValidationError as exc:
            for e in exc.errors(include_url=False, include_context=False, include_input=False):
                field = str(e["loc"][0]) if e["loc"] else None
                errors.append({"field": field, "loc": [*where, *e["loc"]], "msg": e["msg"], "type": e["type"]})
    if errors:
        raise ApiError(422, "invalid transaction", errors)
    return rows, single


async def read_limited(request: Request, limit: int) -> bytes:
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
        out, _ = await core.predict(rows, rows[0].get(schema.ENTITY_KEY))
    except Saturated:
        return 503, b'{"error": "gateway saturated"}', {"Retry-After": "1"}
    return 200, json.dumps(out[0] if single else out).encode(), {}


class PredictFastPath:
    """ASGI middleware answering ``POST /api/v1/predict`` before routing.

    Measured with py-spy at ~1,000 req/s: BentoML's context middleware, Starlette's router and
    mount, and FastAPI's own middleware and dependency stack took more CPU than the gateway's
    work. The other routes (feedback, admin, OpenAPI) keep going through FastAPI."""

    def __init__(self, app: Any, path: str = "/api/v1/predict") -> None:
        self.app = app
        self.path = path
        self.settings = get_settings()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        status, payload, headers = await self._answer(scope, receive)
        raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        raw_headers += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": payload})

    async def _answer(self, scope: Any, receive: Any) -> tuple[int, bytes, dict[str, str]]:
        limit = self.settings.max_body_bytes
        too_large = (413, json.dumps({"error": f"the body is larger than {limit} bytes"}).encode(), {})
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
        return await answer_predict(current_core(), b"".join(chunks), self.settings.max_batch_rows)


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


class Feedback(BaseModel):
    request_id: str = Field(min_length=1, max_length=64)
    label: Literal[0, 1]


class WeightsChange(BaseModel):
    weights: dict[str, float] = Field(description=f"variant -> weight; variants: {', '.join(routing.VARIANTS)}")
    why: str = Field(min_length=1, max_length=500)
    who: str | None = Field(default=None, max_length=100)


class ShadowChange(BaseModel):
    enabled: bool
    target: Literal["xgboost_stable", "xgboost_canary", "pytorch"] = routing.PYTORCH
    why: str = Field(min_length=1, max_length=500)
    who: str | None = Field(default=None, max_length=100)


class RolloutChange(BaseModel):
    stage: int = Field(ge=0, le=100, description="percent of the XGBoost share served by the canary")
    canary_version: str | None = Field(default=None, max_length=64)
    status: RolloutStatus = RolloutStatus.RUNNING
    note: str = Field(default="", max_length=500)
    why: str = Field(min_length=1, max_length=500)
    who: str | None = Field(default=None, max_length=100)


def current_core() -> GatewayCore:
    import bentoml

    return bentoml.get_current_service().core  # type: ignore[no-any-return]


def _who(body_who: str | None, header: str | None) -> str:
    return body_who or header or "admin-api"


PREDICT_BODY = {
    "required": True,
    "content": {"application/json": {"schema": {
        "oneOf": [{"$ref": "#/components/schemas/Transaction"},
                  {"type": "array", "items": {"$ref": "#/components/schemas/Transaction"}, "minItems": 1}]}}},
}


def build_app() -> FastAPI:
    settings = get_settings()
    app = FastAPI(title="healmesh gateway", version="1", description=__doc__)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return JSONResponse({"error": "malformed JSON"}, status_code=400)
        detail = [{"field": str(e["loc"][-1]) if e.get("loc") else None, "loc": list(e.get("loc", [])),
                   "msg": e.get("msg"), "type": e.get("type")} for e in errors]
        return JSONResponse({"error": "invalid request", "detail": detail}, status_code=422)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        body: dict[str, Any] = {"error": exc.error}
        if exc.detail is not None:
            body["detail"] = exc.detail
        return JSONResponse(body, status_code=exc.status)

    @app.post("/predict", response_model=PredictAnswer | list[PredictAnswer], openapi_extra={"requestBody": PREDICT_BODY},
              responses={400: {"description": "malformed JSON"}, 413: {"description": "too large"},
                         422: {"description": "invalid fields, each named"},
                         503: {"description": "gateway saturated; retry after the Retry-After seconds"}})
    async def predict(request: Request) -> Any:
        """Score one transaction (object) or a batch (list). Never 5xx while any path works.

        In the served gateway `PredictFastPath` answers this route before FastAPI routing (the
        same `answer_predict`); this handler documents it and serves it when that is absent."""
        try:
            raw = await read_limited(request, settings.max_body_bytes)
        except ApiError as exc:
            return JSONResponse({"error": exc.error}, status_code=exc.status)
        status, payload, headers = await answer_predict(current_core(), raw, settings.max_batch_rows)
        return Response(payload, status_code=status, headers=headers, media_type="application/json")

    @app.post("/feedback", responses={404: {"description": "unknown request id"},
                                      409: {"description": "a different label is already stored"},
                                      503: {"description": "the feature store is unavailable"}})
    async def feedback(fb: Feedback) -> dict[str, Any]:
        """Attach the true label to an answered request (idempotent for the same label)."""
        try:
            result = await current_core().feature_log.feedback(fb.request_id, fb.label)
        except Exception as exc:  # Redis away: refuse rather than pretend
            raise HTTPException(503, f"feature store unavailable: {type(exc).__name__}",
                                headers={"Retry-After": "1"}) from None
        if result == -1:
            raise HTTPException(404, f"unknown request_id {fb.request_id!r}")
        if result == -2:
            raise HTTPException(409, f"request {fb.request_id!r} already has a different label")
        return {"request_id": fb.request_id, "label": fb.label, "status": "stored" if result == 1 else "unchanged"}

    @app.post("/feedback/batch", responses={503: {"description": "the feature store is unavailable"}})
    async def feedback_batch(items: Annotated[list[Feedback], Body(max_length=1_000)]) -> dict[str, Any]:
        """Up to 1,000 labels at once; per item the same rules as POST /feedback."""
        core = current_core()
        counts = {"stored": 0, "unchanged": 0}
        unknown, conflicts = [], []
        try:
            for fb in items:
                result = await core.feature_log.feedback(fb.request_id, fb.label)
                if result == 1:
                    counts["stored"] += 1
                elif result == 0:
                    counts["unchanged"] += 1
                elif result == -1:
                    unknown.append(fb.request_id)
                else:
                    conflicts.append(fb.request_id)
        except Exception as exc:
            raise HTTPException(503, f"feature store unavailable: {type(exc).__name__}",
                                headers={"Retry-After": "1"}) from None
        return {**counts, "unknown": unknown, "conflicts": conflicts}

    admin = APIRouter(prefix="/admin", dependencies=[Depends(require_token)])

    @admin.get("/state")
    async def state() -> dict[str, Any]:
        return current_core().describe()

    @admin.get("/weights")
    async def get_weights() -> dict[str, Any]:
        core = current_core()
        return {"weights": core.state.weights.as_dict(), "effective": core.effective_weights()}

    @admin.put("/weights", responses={409: {"description": "canary weight without a canary version"},
                                      422: {"description": "invalid weights"}})
    async def set_weights(change: WeightsChange, x_healmesh_actor: str | None = Header(default=None)) -> dict[str, Any]:
        core = current_core()
        try:
            weights = Weights.parse(change.weights)
        except WeightsError as exc:
            raise HTTPException(422, str(exc)) from None
        if weights.get(routing.XGB_CANARY) > 0 and not core.state.rollout.canary_version:
            raise HTTPException(409, "the canary has weight but no canary_version is set (PUT /admin/rollout)")
        return await _change(core, "weights", weights, _who(change.who, x_healmesh_actor), change.why)

    @admin.get("/shadow")
    async def get_shadow() -> dict[str, Any]:
        return current_core().state.describe()["shadow"]

    @admin.put("/shadow")
    async def set_shadow(change: ShadowChange, x_healmesh_actor: str | None = Header(default=None)) -> dict[str, Any]:
        core = current_core()
        value = Shadow(enabled=change.enabled, target=change.target)
        return await _change(core, "shadow", value, _who(change.who, x_healmesh_actor), change.why)

    @admin.get("/rollout")
    async def get_rollout() -> dict[str, Any]:
        return current_core().state.describe()["rollout"]

    @admin.put("/rollout", responses={422: {"description": "invalid rollout"}})
    async def set_rollout(change: RolloutChange, x_healmesh_actor: str | None = Header(default=None)) -> dict[str, Any]:
        core = current_core()
        try:
            value = Rollout(stage=change.stage, canary_version=change.canary_version, status=change.status,
                            note=change.note)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        return await _change(core, "rollout", value, _who(change.who, x_healmesh_actor), change.why)

    @admin.get("/audit")
    async def audit(limit: int = Query(100, ge=1, le=1000)) -> list[dict[str, Any]]:
        try:
            return await current_core().control.audit(limit)
        except Exception as exc:
            raise HTTPException(503, f"control store unavailable: {type(exc).__name__}") from None

    app.include_router(admin)
    _install_schema_components(app)
    return app


async def _change(core: GatewayCore, what: str, value: Any, who: str, why: str) -> dict[str, Any]:
    try:
        new = await core.control.change(what, value, who=who, why=why)
    except Exception as exc:
        raise HTTPException(503, f"control store unavailable: {type(exc).__name__}: {exc}",
                            headers={"Retry-After": "1"}) from None
    core.state = new  # this worker at once; the others within control_poll_s
    return new.describe()


def _install_schema_components(app: FastAPI) -> None:
    """Put the Transaction schema into the OpenAPI components the predict body refers to."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        spec = original()
        tx = schema.Transaction.model_json_schema(ref_template="#/components/schemas/{model}")
        spec.setdefault("components", {}).setdefault("schemas", {})["Transaction"] = tx
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]
