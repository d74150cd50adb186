"""The scorer admin API, mounted at ``/admin`` on every scorer.

Guarded by ``HEALMESH_ADMIN_TOKEN`` (``Authorization: Bearer <token>``, compared in constant
time). Without a configured token every admin call is refused with 503.
"""

from __future__ import annotations

import hmac
from typing import Any, Literal

from fastapi import Depends, FastAPI, Header, HTTPException
from pydantic import BaseModel, Field

from healmesh.serving.faults import FaultConfig
from healmesh.settings import get_settings


class FaultRequest(BaseModel):
    error_rate: float = Field(0.0, ge=0.0, le=1.0)
    latency_ms: float = Field(0.0, ge=0.0, le=60_000)
    status: Literal[429, 500, 502, 503, 504] = 500
    slot: Literal["all", "stable", "canary"] = "all"
    fail_readyz: bool = False


def require_token(authorization: str | None = Header(default=None)) -> None:
    expected = get_settings().admin_token
    if not expected:
        raise HTTPException(503, "admin API disabled: set HEALMESH_ADMIN_TOKEN")
    given = (authorization or "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(401, "missing or wrong admin token", headers={"WWW-Authenticate": "Bearer"})


def _service() -> Any:
    import bentoml

    return bentoml.get_current_service()


def admin_app() -> FastAPI:
    """A fresh app per scorer class (BentoML mounts an app on one service only)."""
    app = FastAPI(title="healmesh scorer admin", dependencies=[Depends(require_token)])

    @app.get("/state")
    def state() -> dict[str, Any]:
        return _service().state()

    @app.put("/faults")
    def set_faults(req: FaultRequest) -> dict[str, Any]:
        svc = _service()
        svc.faults.set(FaultConfig(**req.model_dump()))
        return svc.state()

    @app.delete("/faults")
    def clear_faults() -> dict[str, Any]:
        svc = _service()
        svc.faults.clear()
        return svc.state()

    @app.post("/reload")
    def reload() -> dict[str, Any]:
        svc = _service()
        if not hasattr(svc, "follower"):
            raise HTTPException(404, "this scorer serves rules, not registry models")
        svc.follower.sync()
        return svc.state()

    return app
