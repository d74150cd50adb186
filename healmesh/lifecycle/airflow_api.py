"""A small client of Airflow 3's REST API (token from the simple auth manager's login)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx


class AirflowClient:
    def __init__(self, base_url: str, username: str, password: str, timeout: float = 15.0) -> None:
        self.base = base_url.rstrip("/")
        r = httpx.post(f"{self.base}/auth/token", json={"username": username, "password": password}, timeout=timeout)
        r.raise_for_status()
        self.headers = {"Authorization": f"Bearer {r.json()['access_token']}"}
        self.timeout = timeout

    # reads and PATCH are idempotent, so a 5xx or a dropped connection is tried again: on SQLite the
    # api-server answers 500 "database is locked" while the scheduler writes (seen on the demo's
    # unpause right after `make up`). A POST (trigger) is not repeated: it may have created the run.
    RETRIED = ("GET", "PATCH")
    ATTEMPTS = 5

    def _req(self, method: str, path: str, sleep: Callable[[float], None] = time.sleep, **kw: Any) -> Any:
        for attempt in range(self.ATTEMPTS):
            last = attempt == self.ATTEMPTS - 1 or method not in self.RETRIED
            try:
                r = httpx.request(method, f"{self.base}/api/v2{path}", headers=self.headers, timeout=self.timeout,
                                  **kw)
            except httpx.TransportError:
                if last:
                    raise
            else:
                if r.status_code < 500 or last:
                    r.raise_for_status()
                    return r.json()
            sleep(0.5 * 2 ** attempt)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def dags(self) -> list[dict[str, Any]]:
        return self._req("GET", "/dags")["dags"]

    def unpause(self, dag_id: str) -> None:
        self._req("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        return self._req("POST", f"/dags/{dag_id}/dagRuns",
                         json={"logical_date": None, "conf": conf or {}})["dag_run_id"]

    def runs(self, dag_id: str, limit: int = 5) -> list[dict[str, Any]]:
        return self._req("GET", f"/dags/{dag_id}/dagRuns",
                         params={"order_by": "-run_after", "limit": limit})["dag_runs"]

    def run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self._req("GET", f"/dags/{dag_id}/dagRuns/{run_id}")

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        tis = self._req("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
        return {t["task_id"]: t["state"] for t in tis}

    def wait(self, dag_id: str, run_id: str, timeout_s: float, poll_s: float = 2.0,
             progress: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Poll until the run ends; ``progress`` hears each change of its tasks' states."""
        deadline = time.monotonic() + timeout_s
        last = ""
        while time.monotonic() < deadline:
            run = self.run(dag_id, run_id)
            if progress is not None:
                line = task_progress(self.task_states(dag_id, run_id))
                if line != last:
                    progress(line)
                    last = line
            if run["state"] in ("success", "failed"):
                return run
            time.sleep(poll_s)
        raise TimeoutError(f"{dag_id} run {run_id} did not finish within {timeout_s:.0f}s")

    def next_run_after(self, dag_id: str, after_iso: str, timeout_s: float, poll_s: float = 2.0) -> dict[str, Any]:
        """The first run of ``dag_id`` queued after ``after_iso`` (asset-triggered runs)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for run in self.runs(dag_id, limit=5):
                if (run.get("run_after") or "") > after_iso:
                    return run
            time.sleep(poll_s)
        raise TimeoutError(f"no {dag_id} run started within {timeout_s:.0f}s")


FINISHED = ("success", "skipped", "failed", "upstream_failed", "removed")


def task_progress(states: dict[str, str | None]) -> str:
    """'3/6 tasks done; running: train_candidate' from task id -> state."""
    done = sum(1 for s in states.values() if s in FINISHED)
    running = sorted(t for t, s in states.items() if s == "running")
    failed = sorted(t for t, s in states.items() if s == "failed")  # not the ones skipped after them
    line = f"{done}/{len(states)} tasks done"
    if running:
        line += f"; running: {', '.join(running)}"
    if failed:
        line += f"; failed: {', '.join(failed)}"
    return line
