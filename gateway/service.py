"""The gateway (port 8000), the mesh's entry service.

`bentoml serve .` (the mesh bento) starts it with the three scorers it depends on. With
HEALMESH_XGB_URL / _TORCH_URL / _FALLBACK_URL set, it calls scorers served elsewhere
instead (that is how `make up` runs it: each scorer its own server on 8001-8003).
"""

from typing import Annotated

import bentoml
from pydantic import Field
from starlette.responses import Response

from bentos.fallback_scorer import FallbackScorer
from bentos.torch_scorer import TorchScorer
from bentos.xgboost_scorer import XGBoostScorer
from healmesh import schema
from healmesh.access import AccessGuard, gateway_policy, settings_tokens
from healmesh.errors import Saturated
from healmesh.gateway.api import PredictAnswer, PredictFastPath, build_app, shed_answer
from healmesh.gateway.status_page import status_app
from healmesh.gateway.wiring import redis_client, running_workers, scorer_address, server_started
from healmesh.settings import get_settings

S = get_settings()
FAST_ROUTE = "/api/v1/predict"
API_ROUTES = [FAST_ROUTE, "/api/v1/feedback", "/predict"]
# the typed API's batch: BentoML answers 400 naming `rows` outside these bounds
# the project this process serves: its row model types the API, its entity key routes
Transaction = schema.active().transaction
ENTITY_KEY = schema.active().entity_key
Rows = Annotated[list[Transaction], Field(min_length=1, max_length=S.max_batch_rows)]  # type: ignore[valid-type]


@bentoml.service(
    name="gateway",
    workers=S.gateway_workers,
    traffic={"timeout": 30},
    # the fast route's requests skip BentoML's per-request traffic metrics (our own count them,
    # healmesh_gateway_*): with py-spy at 256 clients prometheus_client took 15 % of a worker's CPU
    logging={"access": {"enabled": S.gateway_access_log, "skip_paths": [FAST_ROUTE]}},
    # readiness is the gateway's own (model variants answer), not BentoML's probe of its dependencies
    runner_probe={"enabled": False},
    **({} if S.gateway_tracing else {"tracing": {"excluded_urls": API_ROUTES}}),
)
@bentoml.asgi_app(build_app(), path="/api/v1")
@bentoml.asgi_app(status_app(), path="/ui")
class Gateway:
    xgboost = bentoml.depends(XGBoostScorer, url=S.xgb_url)
    pytorch = bentoml.depends(TorchScorer, url=S.torch_url)
    fallback = bentoml.depends(FallbackScorer, url=S.fallback_url)

    def __init__(self) -> None:
        from healmesh.gateway.core import GatewayCore
        from healmesh.gateway.metrics import GatewayMetrics  # after BentoML set up its metrics dir

        deps = type(self)
        addresses = {"xgboost": scorer_address(deps.xgboost, "HEALMESH_XGB_URL"),
                     "pytorch": scorer_address(deps.pytorch, "HEALMESH_TORCH_URL"),
                     "fallback": scorer_address(deps.fallback, "HEALMESH_FALLBACK_URL")}
        self.core = GatewayCore(S, addresses, GatewayMetrics(), redis_client(S), started_at=server_started())

    @bentoml.api(route="/predict")
    async def predict(self, rows: Rows) -> list[PredictAnswer]:
        """Score transactions (body: {"rows": [transaction, ...]}): the mesh's prediction as a
        typed API for BentoML's clients and docs; the same pipeline and answers as
        POST /api/v1/predict, which stays the fast route."""
        records = [r.model_dump() for r in rows]
        try:
            out, _ = await self.core.predict(records, records[0].get(ENTITY_KEY) if ENTITY_KEY else None)
        except Saturated as exc:
            # a returned Response is sent as it is; a 5xx BentoML exception would lose the body and Retry-After
            status, body, headers = shed_answer(exc)
            return Response(body, status, headers, media_type="application/json")  # type: ignore[return-value]
        return [PredictAnswer.model_validate(o) for o in out]

    # always JSON: spares BentoML deriving a list's media type from its schema on every answer
    predict.output_spec.media_type = "application/json"

    @bentoml.on_startup
    async def _start(self) -> None:
        await self.core.start()

    @bentoml.on_shutdown
    async def _stop(self) -> None:
        await self.core.stop()

    async def __is_alive__(self) -> bool:
        """Alive unless the server has run short of its workers for HEALMESH_GATEWAY_WORKER_MISSING_S
        (a killed worker nobody replaced); else 503 with why, and the orchestrator restarts it."""
        verdict = self.core.liveness(running_workers())
        if not verdict.ready:
            from starlette.exceptions import HTTPException

            raise HTTPException(503, detail=verdict.reason)
        return True

    async def __is_ready__(self) -> bool:
        """Ready when the model variants answer (healmesh.policies.readiness); else 503 with why."""
        verdict = await self.core.check_ready()
        if not verdict.ready:
            from starlette.exceptions import HTTPException

            raise HTTPException(503, detail=verdict.reason)
        return True


# the guard first: it is the outer of the two, so no route (the fast path neither) reads a body
# before the credential and the size are checked
Gateway.add_asgi_middleware(AccessGuard, policy=gateway_policy(S.max_body_bytes), tokens=settings_tokens)
Gateway.add_asgi_middleware(PredictFastPath)
