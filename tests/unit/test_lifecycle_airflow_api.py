"""Tests healmesh.lifecycle.airflow_api: the task progress line."""

def test_task_progress_counts_finished_tasks_and_names_running_and_failed_ones():
    from healmesh.lifecycle.airflow_api import task_progress

    line = task_progress({"a": "success", "b": "skipped", "c": "running", "d": None, "e": "failed",
                          "f": "upstream_failed"})
    assert line == "4/6 tasks done; running: c; failed: e"
    assert task_progress({"a": "queued"}) == "0/1 tasks done"


class _Flaky:
    """A real HTTP server on 127.0.0.1 that answers the first ``fail`` requests with 500
    (as Airflow's api-server does with "database is locked"), then 200."""

    def __init__(self, fail: int) -> None:
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        outer = self
        self.fail, self.seen = fail, []

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                outer.seen.append(self.command)
                if self.path == "/auth/token":
                    code, body = 201, {"access_token": "t"}
                elif len(outer.seen) - 1 <= outer.fail:
                    code, body = 500, {"detail": "database is locked"}
                else:
                    code, body = 200, {"dag_id": "x", "dag_run_id": "r1"}
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                raw = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = do_PATCH = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


def test_an_idempotent_call_is_tried_again_after_a_5xx_and_a_trigger_is_not():
    import httpx
    import pytest

    from healmesh.lifecycle.airflow_api import AirflowClient

    flaky = _Flaky(fail=2)
    try:
        client = AirflowClient(flaky.url, "admin", "pw")
        waits: list[float] = []
        assert client._req("PATCH", "/dags/x", sleep=waits.append, json={"is_paused": False})["dag_id"] == "x"
        assert flaky.seen == ["POST", "PATCH", "PATCH", "PATCH"] and waits == [0.5, 1.0]
        flaky.seen.clear()
        flaky.fail = 1  # the login is not counted now: the trigger's POST gets the 500
        with pytest.raises(httpx.HTTPStatusError, match="500"):
            client._req("POST", "/dags/x/dagRuns", sleep=waits.append, json={})
        assert flaky.seen == ["POST"]  # one try: it may have created the run
    finally:
        flaky.server.shutdown()
