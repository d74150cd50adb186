"""The scorer admin API, mounted at ``/admin`` on every scorer.

Guarded by ``HEALMESH_ADMIN_TOKEN`` (``Authorization: Bearer <token>``, compared in constant
time) in the access guard before any body is read, and again here. Without a configured token
every admin call is refused with 503.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel, Field

from healmesh.access import Access, requires
from healmesh.serving.faults import FaultConfig


class FaultRequest(BaseModel):
    error_rate: float = Field(0.0, ge=0.0, le=1.0)
    latency_ms: float = Field(0.0, ge=0.0, le=60_000)
    status: Literal[429, 500, 502, 503, 504] = 500
    slot: Literal["all", "stable", "canary"] = "all"
    fail_readyz: bool = False
    garbage_rate: float = Field(0.0, ge=0.0, le=1.0,
                                description="share of predictions answered 200 with a non-JSON body")
    seed: int | None = Field(None, ge=0, le=2**32, description="fixes the sequence of error decisions")


def _service() -> Any:
    import bentoml

    return bentoml.get_current_service()


def admin_app() -> FastAPI:
    """A fresh app per scorer class (BentoML mounts an app on one service only)."""
    app = FastAPI(title="healmesh scorer admin", dependencies=[Depends(requires(Access.ADMIN))])

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
