"""The status page at ``GET /ui``: what the mesh is doing now, for people.

Weights (configured and after breakers), breaker states, rollout stage and canary version,
the versions each scorer serves (champion in stable, challenger in canary), the latest drift
check with a link to its report, and the last admin changes and lifecycle events. Read-only,
server-rendered, refreshes itself every 5 seconds.

Drift reports under ``/ui/reports/``: ``index.html`` is rendered from the control state's listing
(``healmesh.control.drift_reports``), and ``<id>.html`` is fetched from the MLflow tracking
server's artifact proxy, where the drift check stored it: the gateway needs no disk shared with
the Airflow worker that wrote it.
"""

from __future__ import annotations

import html
import json
import time
from typing import Any

import httpx
from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse

from healmesh.control import keys
from healmesh.control.drift_reports import REPORT_HTML, index_page, proxied_path
from healmesh.control.report_ids import BadReportId, check_report_id
from healmesh.gateway.api import current_core
from healmesh.settings import get_settings

# The largest report the gateway passes on (read into memory): Evidently's self-contained page of
# our 20-odd features is a few MB; anything far past that is not one of ours.
MAX_REPORT_BYTES = 64 * 1024 * 1024
ARTIFACTS_API = "/api/2.0/mlflow-artifacts/artifacts/"
NO_SUCH_REPORT = "no such report"


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts)) if ts else "never"


def _e(value: Any) -> str:
    return html.escape(str(value))


async def _scorer_slots(core: Any) -> dict[str, Any]:
    """What each model scorer serves (None when it does not answer)."""
    return {proc: await core.scorer_slots(proc) for proc in ("xgboost", "pytorch")}


async def _events(core: Any, count: int = 10) -> list[dict[str, Any]]:
    try:
        entries = await core.redis.xrevrange(keys.events(core.s.key_prefix), count=count)
    except Exception:  # Redis away: the page still renders what the gateway knows
        return []
    out = []
    for _, fields in entries:
        f = {k.decode(): v.decode() for k, v in fields.items()}
        out.append({"when": float(f["when"]), "kind": f["kind"], "message": f["message"]})
    return out


async def _audit(core: Any, count: int = 10) -> list[dict[str, Any]]:
    try:
        return await core.control.audit(count)
    except Exception:
        return []


def _stage(rollout: dict[str, Any]) -> str:
    if rollout["status"] == "shadow":
        return "shadow: 0 % of users, live traffic mirrored to the canary"
    return f"{rollout['stage']}%"


def _shadow(control: dict[str, Any], seen: dict[str, Any]) -> str:
    if not control.get("enabled"):
        return "off"
    agreement = seen.get("agreement")
    said = f"decisions agree with the primary's: {agreement:.1%}" if agreement is not None else "no answer compared yet"
    return (f"mirrored to {_e(control['target'])}; {said}; {seen.get('in_flight', 0)} in flight, "
            f"{seen.get('dropped', 0)} dropped (this worker)")


def render(state: dict[str, Any], slots: dict[str, Any], audit: list[dict[str, Any]],
           events: list[dict[str, Any]]) -> str:
    control = state["control"]
    weights, effective = control["weights"], state["effective_weights"]
    rollout, drift = control["rollout"], control["drift"]
    weight_rows = "".join(
        f"<tr><td>{_e(v)}</td><td class='num' data-weight='{_e(v)}'>{w:.0%}</td>"
        f"<td class='num' data-effective='{_e(v)}'>{effective.get(v, 0):.0%}</td></tr>" for v, w in weights.items())
    breaker_rows = "".join(
        f"<tr><td>{_e(name)}</td><td class='breaker {_e(b['state'])}' data-breaker='{_e(name)}'>{_e(b['state'])}</td>"
        f"<td class='num'>{b['capacity']:.0%}</td></tr>" for name, b in state["breakers"].items())
    limit_rows = "".join(
        f"<tr><td>{_e(scope)}</td><td class='num' data-limit='{_e(scope)}'>{lim['limit']}</td>"
        f"<td class='num'>{lim['in_flight']}</td><td class='num'>{lim['shed']['primary']}</td>"
        f"<td class='num'>{lim['shed']['shadow']}</td></tr>" for scope, lim in state.get("limits", {}).items())
    slot_rows = ""
    for proc, s in slots.items():
        if not s:
            slot_rows += f"<tr><td>{_e(proc)}</td><td colspan='2'>not answering</td></tr>"
            continue
        for slot in ("stable", "canary"):
            m = s.get(slot)
            served = f"v{_e(m['version'])} ({_e(m.get('source', ''))})" if m else "empty"
            slot_rows += f"<tr><td>{_e(proc)}</td><td>{slot}</td><td data-slot='{_e(proc)}-{slot}'>{served}</td></tr>"
    report = drift.get("report")
    report_link = f"<a href='/ui/reports/{_e(report)}'>{_e(report)}</a>" if report else "no report yet"
    top = sorted(((f, s.get("psi", 0.0)) for f, s in drift.get("scores", {}).items()), key=lambda x: -x[1])[:5]
    audit_rows = "".join(f"<tr><td>{_when(a['when'])}</td><td>{_e(a['what'])}</td><td>{_e(a['who'])}</td>"
                         f"<td>{_e(a['why'])}</td><td><code>{_e(json.dumps(a['after']))}</code></td></tr>"
                         for a in audit)
    event_rows = "".join(f"<tr><td>{_when(ev['when'])}</td><td>{_e(ev['kind'])}</td><td>{_e(ev['message'])}</td></tr>"
                         for ev in events)
    fl = state["feature_log"]
    worker = state.get("worker", {}).get("instance_id", "?")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">
<title>healmesh status</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; color: #1d2329; background: #f7f8fa; }}
h1 {{ margin: 0 0 .2rem; }} h2 {{ font-size: 1.05rem; margin: 0 0 .5rem; }}
.grid {{ display: grid; grid-template-columns: repeat(auto-fit, minmax(330px, 1fr)); gap: 1rem; margin-top: 1rem; }}
.card {{ background: white; border-radius: 8px; padding: 1rem; box-shadow: 0 1px 3px rgba(0,0,0,.1); }}
table {{ border-collapse: collapse; width: 100%; font-size: 13px; }}
td, th {{ padding: .25rem .4rem; border-bottom: 1px solid #eee; text-align: left; vertical-align: top; }}
.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
.breaker.closed {{ color: #1a7f37; }} .breaker.half_open {{ color: #9a6700; }} \
.breaker.open {{ color: #cf222e; font-weight: bold; }}
.wide {{ grid-column: 1 / -1; }} .muted {{ color: #6a737d; font-size: 12px; }}
</style></head><body>
<h1>healmesh</h1>
<div class="muted">refreshed {_when(time.time())} · control state v{control['version']} ·
feature log: {fl['written']} written, {fl['buffered']} buffered, {fl['dropped']} dropped,
Redis {'up' if fl['redis_up'] else 'DOWN'} · gateway worker <span id="worker">{_e(worker)}</span>
(breakers and counts are this worker's)</div>
<div class="grid">
<div class="card"><h2>Routing weights</h2><table><tr><th>variant</th><th class='num'>configured</th>
<th class='num'>after breakers</th></tr>{weight_rows}</table></div>
<div class="card"><h2>Circuit breakers</h2><table><tr><th>upstream</th><th>state</th><th class='num'>capacity</th></tr>
{breaker_rows}</table></div>
<div class="card"><h2>Concurrency limits</h2><table><tr><th>scope</th><th class='num'>limit</th>
<th class='num'>in flight</th><th class='num'>shed</th><th class='num'>shadow shed</th></tr>
{limit_rows or '<tr><td colspan=5>none</td></tr>'}</table>
<div class="muted">adaptive, from latency; past a limit: 503 + Retry-After at once (shadow calls first)</div></div>
<div class="card"><h2>Rollout</h2><table>
<tr><td>stage</td><td id="rollout-stage">{_stage(rollout)}</td></tr>
<tr><td>status</td><td id="rollout-status">{_e(rollout['status'])}</td></tr>
<tr><td>shadow</td><td id="shadow">{_shadow(control['shadow'], state.get('shadow') or {})}</td></tr>
<tr><td>canary version</td><td id="canary-version">{_e(rollout['canary_version'] or '-')}</td></tr>
<tr><td>note</td><td>{_e(rollout['note'] or '')}</td></tr></table>
<h2 style="margin-top:.8rem">Models served (champion = stable)</h2><table>{slot_rows}</table></div>
<div class="card"><h2>Latest drift check</h2><table>
<tr><td>checked</td><td>{_when(drift.get('checked_at'))}</td></tr>
<tr><td>decision</td><td id="drift-decision">{_e(drift.get('decision'))}</td></tr>
<tr><td>champion</td><td>v{_e(drift.get('model_version'))}</td></tr>
<tr><td>window</td><td>{drift.get('window_size', 0)} records</td></tr>
<tr><td>drifted share</td><td>{drift.get('share_drifted', 0):.0%}</td></tr>
<tr><td>top PSI</td><td>{', '.join(f'{_e(f)} {p:.2f}' for f, p in top) or '-'}</td></tr>
<tr><td>report</td><td>{report_link} · <a href='/ui/reports/index.html'>all reports</a></td></tr></table></div>
<div class="card wide"><h2>Lifecycle events</h2><table><tr><th>when</th><th>event</th><th>what happened</th></tr>
{event_rows or '<tr><td colspan=3>none yet</td></tr>'}</table></div>
<div class="card wide"><h2>Admin changes</h2><table>\
<tr><th>when</th><th>what</th><th>who</th><th>why</th><th>after</th></tr>
{audit_rows or '<tr><td colspan=5>none yet</td></tr>'}</table></div>
</div></body></html>
"""


def report_id_of(name: str) -> str:
    """The report id of ``<id>.html``; 404 (the same answer as an unknown report) for any other name."""
    try:
        if not name.endswith(".html"):
            raise BadReportId(name)
        return check_report_id(name.removesuffix(".html"), "report")
    except BadReportId:
        raise HTTPException(404, NO_SUCH_REPORT) from None


async def fetch_artifact(tracking_uri: str, path: str, limit: int = MAX_REPORT_BYTES) -> bytes:
    """An artifact from the tracking server's artifact proxy, at most ``limit`` bytes: 404 when
    it has none, 502 when it fails or sends more, 503 when there is no server to ask."""
    if not tracking_uri.startswith(("http://", "https://")):
        raise HTTPException(503, "no MLflow tracking server to read reports from (MLFLOW_TRACKING_URI "
                                 f"is {tracking_uri.split(':', 1)[0]}:…, not http)")
    url = tracking_uri.rstrip("/") + ARTIFACTS_API + path
    try:
        async with httpx.AsyncClient(timeout=get_settings().registry_timeout_s) as client, \
                client.stream("GET", url) as r:
            if r.status_code == 404:
                raise HTTPException(404, NO_SUCH_REPORT)
            if r.status_code != 200:
                raise HTTPException(502, f"the MLflow server answered {r.status_code} for the report")
            if int(r.headers.get("content-length") or 0) > limit:
                raise HTTPException(502, f"the report is larger than {limit} bytes")
            body = bytearray()
            async for chunk in r.aiter_bytes():
                body += chunk
                if len(body) > limit:
                    raise HTTPException(502, f"the report is larger than {limit} bytes")
            return bytes(body)
    except httpx.HTTPError as exc:
        raise HTTPException(502, f"the MLflow server did not answer: {type(exc).__name__}") from None


def status_app() -> FastAPI:
    app = FastAPI(title="healmesh status", openapi_url=None, docs_url=None, redoc_url=None)

    @app.get("/", response_class=HTMLResponse)
    async def page() -> HTMLResponse:
        core = current_core()
        return HTMLResponse(render(core.describe(), await _scorer_slots(core), await _audit(core),
                                   await _events(core)))

    @app.get("/reports/{name}", response_class=HTMLResponse)
    async def report(name: str) -> HTMLResponse:
        if name == "index.html":
            try:
                listed = await current_core().control.reports()
            except Exception as exc:  # Redis away
                raise HTTPException(503, f"the report listing is unavailable ({type(exc).__name__})") from None
            return HTMLResponse(index_page(listed))
        report_id = report_id_of(name)  # before anything is looked up
        try:
            record = await current_core().control.report(report_id)
        except Exception as exc:  # Redis away
            raise HTTPException(503, f"the report listing is unavailable ({type(exc).__name__})") from None
        path = proxied_path(record.artifact_uri, REPORT_HTML) if record and record.has_html else None
        if path is None:
            raise HTTPException(404, NO_SUCH_REPORT)
        return HTMLResponse(await fetch_artifact(get_settings().local_mlflow_uri, path))

    return app
