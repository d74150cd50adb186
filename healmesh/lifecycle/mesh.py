"""The mesh as the lifecycle sees it: the gateway's admin API (routing, rollout stage, metrics)
and the XGBoost scorer's admin API (reload the registry aliases now)."""

from __future__ import annotations

from typing import Any

import httpx

from healmesh.errors import HealmeshError
from healmesh.policies.rollout import RolloutStatus
from healmesh.settings import Settings
from healmesh.urls import local_url

ACTOR = "airflow"


class MeshError(HealmeshError, RuntimeError):
    """The gateway's admin API refused a call, or did not answer."""


class MeshClient:
    def __init__(self, settings: Settings, token: str, actor: str = ACTOR, timeout: float = 10.0) -> None:
        self.gateway = settings.gateway_api_url.rstrip("/")
        self.xgb = (settings.xgb_url or local_url(settings.xgb_port)).rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}", "X-Healmesh-Actor": actor}
        self.timeout = timeout

    def _call(self, method: str, url: str, **kw: Any) -> Any:
        try:
            r = httpx.request(method, url, headers=self.headers, timeout=self.timeout, **kw)
        except httpx.HTTPError as exc:
            raise MeshError(f"{method} {url}: {type(exc).__name__}: {exc}") from exc
        if r.status_code >= 400:
            raise MeshError(f"{method} {url}: {r.status_code} {r.text[:300]}")
        return r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text

    def gateway_state(self) -> dict[str, Any]:
        return self._call("GET", f"{self.gateway}/api/v1/admin/state")

    def set_rollout(self, stage: int, canary_version: str | None, status: RolloutStatus, why: str,
                    note: str = "") -> None:
        self._call("PUT", f"{self.gateway}/api/v1/admin/rollout",
                   json={"stage": stage, "canary_version": canary_version, "status": status, "why": why, "note": note})

    def rollout(self) -> dict[str, Any]:
        """The gateway's rollout state: stage, canary_version, status, note."""
        return self._call("GET", f"{self.gateway}/api/v1/admin/rollout")

    def gateway_metrics(self) -> str:
        try:
            r = httpx.get(f"{self.gateway}/metrics", timeout=self.timeout)
        except httpx.HTTPError as exc:
            raise MeshError(f"GET {self.gateway}/metrics: {exc}") from exc
        return r.text

    def warm_up_canary(self, rows: list[dict[str, Any]], calls: int = 40) -> int:
        """Call the scorer's canary route directly before the canary takes traffic: the first
        calls to a freshly loaded slot (and BentoML's batcher learning its timings) are slow,
        and would otherwise be charged to the canary's p95. Returns the calls that answered."""
        ok = 0
        with httpx.Client(timeout=self.timeout) as client:
            for i in range(calls):
                try:
                    r = client.post(f"{self.xgb}/predict_canary", json={"rows": [rows[i % len(rows)]]})
                    ok += r.status_code == 200
                except httpx.HTTPError:
                    pass
        return ok

    def xgboost_slots(self) -> dict[str, Any]:
        """What the XGBoost scorer's slots serve now (its admin state), without reloading."""
        return self._call("GET", f"{self.xgb}/admin/state")["slots"]

    def reload_xgboost(self) -> dict[str, Any]:
        """Make the XGBoost scorer read the aliases now; returns its slots."""
        return self._call("POST", f"{self.xgb}/admin/reload")["slots"]
