"""The gateway's runtime: wires the policies (routing, breakers, retry budget) to the
transports (scorer HTTP clients, Redis) for one worker process.

One request: admitted under the worker's adaptive concurrency limit (else 503 at once) ->
choose a variant (weights after breakers, sticky by card id) -> call it within the deadline,
if its own limit has room -> on error, timeout or overload retry once on the next variant if
the retry budget and the deadline allow -> the fallback scorer -> the gateway's own rules
(``degraded``); every variant busy: 503 (``healmesh.policies.chain`` decides each step, this
module makes the calls). Then, off the hot path: the feature-log record and, in shadow mode,
a bounded fire-and-forget call to the shadow target, the first thing dropped under load.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from healmesh import rules, schema
from healmesh.control import keys
from healmesh.control.state import ControlState, state_after_read
from healmesh.control.store import ControlStore
from healmesh.errors import Saturated
from healmesh.gateway.feature_log import FeatureLog, LogRecord
from healmesh.gateway.upstreams import (
    CallResult,
    Outcome,
    ScorerClient,
    SingleFlight,
    Upstream,
    admin_slots,
    probe_ready,
)
from healmesh.heap import freeze_heap
from healmesh.policies import readiness, routing
from healmesh.policies.breaker import CircuitBreaker, Transition
from healmesh.policies.chain import DROPPED, LIMITED, ChainPlan, StepKind
from healmesh.policies.concurrency import ConcurrencyLimit, Kind
from healmesh.policies.drift_decision import DriftDecision
from healmesh.policies.retry_budget import RetryBudget
from healmesh.settings import Settings

log = logging.getLogger("healmesh.gateway")

# scorer process -> the upstreams (variant name, route) it serves
PROCESS_ROUTES: dict[str, tuple[tuple[str, str], ...]] = {
    "xgboost": ((routing.XGB_STABLE, "/predict"), (routing.XGB_CANARY, "/predict_canary")),
    "pytorch": ((routing.PYTORCH, "/predict"),),
    "fallback": ((routing.FALLBACK, "/predict"),),
}
WARM_UP_TIMEOUT_S = 10.0  # a readiness check's prediction: a process that just started may be slow
FIRST_PROBE_S = 3.0  # how long a starting worker waits for its first probe round before it serves
# how long a worker not yet ready lets a `/readyz` wait for a probe round of its own. The workers
# probe on their own clocks: in the built mesh one worker said ready while its sibling, a probe
# round behind, still answered 503 (a landing CI run saw 200 then 503 on the next request)
READY_CHECK_S = 3.0
LOG_STATES = ("written", "dropped", "spilled", "replayed")  # feature-log record fates exported as counters


@dataclass
class Answer:
    scores: list[dict[str, Any]]  # per row: probability, label, model, model_version
    variant: str
    fallback: bool = False
    degraded: bool = False
    attempts: list[tuple[str, str]] = field(default_factory=list)  # (upstream, outcome)


class GatewayCore:
    def __init__(self, settings: Settings, addresses: Mapping[str, str], metrics: Any, redis: Any,
                 started_at: float | None = None) -> None:
        """``started_at``: when the server started (monotonic clock; default now): the readiness
        grace counts from there (``wiring.server_started``)."""
        self.s = settings
        self.metrics = metrics
        self.redis = redis
        self.control = ControlStore(redis, settings.key_prefix)
        self.state = ControlState()
        self.feature_log = FeatureLog(
            redis, settings.key_prefix, retention_s=settings.label_retention_s,
            maxlen=settings.feature_log.stream_maxlen, buffer_max=settings.feature_log.buffer_max,
            batch_size=settings.feature_log.flush_batch,
            flush_interval_s=settings.feature_log.flush_interval_ms / 1000.0,
            spool_dir=settings.home / "spool" / settings.key_prefix,
            cold_retention_s=settings.label_limit_s if settings.archive.enabled else None)
        self.clients = {proc: ScorerClient(addr, keep_alive_s=settings.server_keep_alive_s / 2)
                        for proc, addr in addresses.items()}
        self.addresses = dict(addresses)
        self._slot_reads = SingleFlight()
        self.breakers = {name: CircuitBreaker(name, settings.breaker) for routes in PROCESS_ROUTES.values()
                         for name, _ in routes}
        self.upstreams: dict[str, Upstream] = {
            name: Upstream(name, self.clients[proc], route, max_in_flight=settings.upstream_max_in_flight,
                           max_rows=settings.upstream_max_rows, on_call=self._verdict_for(name))
            for proc, routes in PROCESS_ROUTES.items() for name, route in routes}
        for b in self.breakers.values():
            b.listeners.append(self._on_transition)
        self.transitions: deque[dict[str, Any]] = deque(maxlen=50)  # what the admin state shows
        self.budget = RetryBudget(settings.retry_budget)
        self.admission = ConcurrencyLimit(settings.admission_limit)
        self.limits: dict[str, ConcurrencyLimit] = {v: ConcurrencyLimit(settings.upstream_limit)
                                                    for v in routing.VARIANTS}
        self.shadow_in_flight = 0
        self.shadow_dropped = 0
        self._agreement: deque[bool] = deque(maxlen=1_000)
        self._tasks: list[asyncio.Task[None]] = []
        self._rollout_labels: tuple[str, str] | None = None
        self._counted: dict[str, int] = {}  # feature-log stats already exported
        self._rng = random.Random()
        # variant -> None when it answered a test prediction since its process was last seen up
        self.answering: dict[str, str | None] = {}
        self.schema = schema.active()
        # the same rules as the fallback scorer's, read once: the last resort must not fail to load
        self.ruleset = rules.active()
        self._example = json.dumps({"rows": [self.schema.example_row()]}).encode()
        self._started = time.monotonic() if started_at is None else started_at
        self._was_ready = False
        self._short_since: float | None = None  # when the server ran short of workers (liveness)
        self._ready_probe: asyncio.Future[None] | None = None  # a probe round `/readyz` started

    # --- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Before this worker serves: the control state, and one probe round (bounded), so that a
        worker started beside others (a killed one replaced) answers ``/readyz`` as they do."""
        freeze_heap()  # see healmesh.heap.freeze_heap: GC pauses were the p99
        await self.refresh_control()
        self.feature_log.start()
        try:
            await asyncio.wait_for(self.probe_once(), FIRST_PROBE_S)
        except TimeoutError:
            log.info("first probe round unfinished after %.0f s; serving, probes go on", FIRST_PROBE_S)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._poll_control(), name="control-poll"),
                       loop.create_task(self._probe_loop(), name="readyz-probes")]

    async def stop(self) -> None:
        if self._ready_probe is not None:
            self._ready_probe.cancel()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.feature_log.stop()
        for c in self.clients.values():
            await c.close()

    # --- control state -------------------------------------------------------------------
    async def refresh_control(self) -> bool:
        held = self.state
        try:
            read = await self.control.read()
            self.state = state_after_read(held, self.state, read)
            ok = True
        except Exception as exc:  # keep routing with the last state we read
            log.debug("control state unreadable: %s", exc)
            ok = False
        self._publish_state(ok)
        return ok

    async def _poll_control(self) -> None:
        while True:
            await asyncio.sleep(self.s.control_poll_s)
            await self.refresh_control()
            self.metrics.forget_dead_workers()

    def _publish_state(self, redis_ok: bool) -> None:
        m = self.metrics
        m.redis_up.set(1.0 if (redis_ok and self.feature_log.stats.redis_up) else 0.0)
        m.publish_weights(self.state.weights.as_dict(), self.effective_weights())
        m.control_version.set(self.state.version)
        m.in_flight.set(self.in_flight)
        for scope, limit in (("admission", self.admission), *self.limits.items()):
            m.concurrency_limit.labels(scope).set(limit.limit)
            m.limit_in_flight.labels(scope).set(limit.in_flight)
        for name, b in self.breakers.items():
            m.breaker_state.labels(name).set(b.state.level)
        m.log_buffered.set(self.feature_log.buffered)
        stats = self.feature_log.stats
        for label in LOG_STATES:
            now, before = getattr(stats, label), self._counted.get(label, 0)
            if now > before:
                m.log_records.labels(label).inc(now - before)
            self._counted[label] = now
        if stats.flush_errors > self._counted.get("flush_errors", 0):
            m.log_flush_errors.inc(stats.flush_errors - self._counted.get("flush_errors", 0))
        self._counted["flush_errors"] = stats.flush_errors
        drift = self.state.drift
        for feature, scores in drift.scores.items():
            for stat, value in scores.items():
                m.drift_score.labels(feature, stat).set(float(value))
        m.drift_detected.set(1.0 if drift.decision is DriftDecision.DRIFT else 0.0)
        m.drift_share.set(drift.share_drifted)
        if drift.checked_at:
            m.drift_checked_at.set(drift.checked_at)
        rollout = self.state.rollout
        m.rollout_stage.set(rollout.stage)
        labels = (rollout.status, rollout.canary_version or "")
        if labels != self._rollout_labels:
            if self._rollout_labels is not None:
                m.rollout_info.labels(*self._rollout_labels).set(0)
            m.rollout_info.labels(*labels).set(1)
            self._rollout_labels = labels

    # --- breakers and probes -------------------------------------------------------------
    def _on_transition(self, t: Transition) -> None:
        log.warning("breaker %s: %s -> %s (%s)", t.upstream, t.from_state.value, t.to_state.value, t.reason)
        self.metrics.breaker_transitions.labels(t.upstream, t.from_state.value, t.to_state.value).inc()
        self.metrics.breaker_state.labels(t.upstream).set(t.to_state.level)
        self.transitions.append({"upstream": t.upstream, "from": t.from_state.value, "to": t.to_state.value,
                                 "reason": t.reason, "at": time.time()})

    async def _probe_loop(self) -> None:
        while True:
            await asyncio.sleep(self.s.probe_interval_s)
            await self.probe_once()

    async def probe_once(self) -> None:
        """``/readyz`` of every scorer process feeds its breakers; a weighted variant whose
        process is (back) up must also answer one real prediction before it counts as answering
        (the first calls to a process that just started are the slow ones)."""
        results = await asyncio.gather(*(probe_ready(c, timeout_s=min(1.0, self.s.probe_interval_s))
                                         for c in self.clients.values()))
        warm: list[str] = []
        for (proc, _), ok in zip(self.clients.items(), results, strict=True):
            for name, _route in PROCESS_ROUTES[proc]:
                self.breakers[name].record_probe(ok)
                if not ok:
                    self.answering[name] = f"{proc} /readyz does not answer 200"
                elif self.answering.get(name, "") is not None and self.state.weights.get(name) > 0:
                    warm.append(name)
        await asyncio.gather(*(self._warm_up(name) for name in warm))

    async def _warm_up(self, name: str) -> None:
        result = await self.upstreams[name].predict(self._example, 1, WARM_UP_TIMEOUT_S)
        self.answering[name] = None if result.outcome is Outcome.OK else \
            f"a test prediction gave {result.outcome.value} {result.detail[:80]}".strip()

    def liveness(self, running_workers: int | None) -> readiness.Verdict:
        """``/livez``: alive unless the server has been short of its workers too long."""
        verdict, self._short_since = readiness.workers_alive(
            running_workers, self.s.gateway_workers, self._short_since, now=time.monotonic(),
            grace_s=self.s.gateway_worker_missing_s)
        return verdict

    async def check_ready(self) -> readiness.Verdict:
        """``/readyz``. A worker that has not been ready yet does not wait for its probe loop: it
        runs a probe round now (one at a time, shared by concurrent asks, bounded by
        READY_CHECK_S; one that overruns goes on and the next ask sees it), so a worker answers
        as its siblings do once the variants answer. Once ready, the probe loop's view is the answer."""
        verdict = self.readiness()
        if verdict.ready or self._was_ready:
            return verdict
        if self._ready_probe is None or self._ready_probe.done():
            self._ready_probe = asyncio.ensure_future(self.probe_once())
        try:
            await asyncio.wait_for(asyncio.shield(self._ready_probe), READY_CHECK_S)
        except Exception as exc:  # overran (it goes on) or failed: answer what is known now
            log.debug("readiness probe round: %r", exc)
        return self.readiness()

    def readiness(self) -> readiness.Verdict:
        verdict = readiness.decide(self.state.weights.as_dict(), self.answering, started_at=self._started,
                                   now=time.monotonic(), grace_s=self.s.ready_grace_s, was_ready=self._was_ready)
        self._was_ready = self._was_ready or verdict.ready
        return verdict

    async def scorer_slots(self, proc: str) -> dict[str, Any] | None:
        """What a model scorer's slots serve now (its admin API); None when it does not answer."""
        return await self._slot_reads.run(proc, lambda: admin_slots(self.clients[proc], self.s.admin_token or ""))

    def effective_weights(self) -> dict[str, float]:
        capacity: dict[str, float] = {v: self.breakers[v].capacity() for v in routing.VARIANTS}
        return routing.effective(self.state.weights, capacity)

    # --- one prediction ------------------------------------------------------------------
    def saturated(self) -> Saturated | None:
        """The shed a request would get now, before its body is read (None: it would be admitted)."""
        verdict = self.admission.admit(self.admission.in_flight)
        return None if verdict.admitted else Saturated(verdict.retry_after_s or 1.0)

    async def predict(self, rows: list[dict[str, Any]], key: str | None) -> tuple[list[dict[str, Any]], Answer]:
        """Raises ``Saturated`` (503 + Retry-After) past the admission limit or when every
        variant is busy; otherwise always answers (a model, the fallback scorer or the rules)."""
        admitted = self.admission.try_acquire()
        if not admitted.admitted:
            self.count_shed("admission")
            raise Saturated(admitted.retry_after_s or 1.0)
        t0 = time.perf_counter()
        point = routing.key_point(key) if (key and self.s.sticky_routing) else self._rng.random()
        plan = ChainPlan(self.s.chain, self.breakers, self.budget, self.state.weights, point, started_at=t0,
                         limits=self.limits)
        answer: Answer | None = None
        try:
            with plan:
                answer = await self._answer(rows, plan)
        finally:
            elapsed = time.perf_counter() - t0
            # a request the variants shed is the admission limit's sign of too much load
            self.admission.release(elapsed if answer is not None else None, dropped=plan.shed)
            self._publish_request(plan, answer, elapsed)  # also the calls of a request given up half-way
        latency_ms = round(elapsed * 1000.0, 3)
        now_s = time.time()
        request_ids = [keys.new_request_id(now_s) for _ in rows]
        out = [{"request_id": rid, "probability": sc["probability"], "label": sc["label"], "model": sc["model"],
                "model_version": sc["model_version"], "variant": answer.variant, "fallback": answer.fallback,
                "degraded": answer.degraded, "latency_ms": latency_ms}
               for rid, sc in zip(request_ids, answer.scores, strict=True)]
        now = f"{now_s:.3f}"
        for row, o in zip(rows, out, strict=True):
            self._log_primary(row, o, now)
        self._maybe_shadow(rows, out, answer.variant)
        return out, answer

    @property
    def in_flight(self) -> int:
        """Requests this worker is handling: the slots its admission limit has given out."""
        return self.admission.in_flight

    def count_shed(self, where: str) -> None:
        self.metrics.rejected.labels("503").inc()
        self.metrics.shed.labels(where).inc()

    async def _answer(self, rows: list[dict[str, Any]], plan: ChainPlan) -> Answer:
        """The plan decides each step; this only makes the calls (see healmesh.policies.chain)."""
        encoded = [json.dumps(r).encode() for r in rows]
        while (step := plan.next_step()).kind not in (StepKind.RULES, StepKind.SHED):
            result = await self.upstreams[step.upstream].call(encoded, step.timeout_s)
            plan.record(result.outcome.value, ok=result.outcome is Outcome.OK, seconds=result.seconds)
            if result.outcome is Outcome.OK:
                return Answer(self._scores(result), step.upstream, fallback=plan.fallback,
                              attempts=plan.attempt_pairs())
        if step.kind is StepKind.SHED:
            self.count_shed("variants")
            raise Saturated(plan.retry_after_s or self.s.upstream_limit.retry_after_s, where="variants")
        return Answer(self._rules(rows), routing.RULES, fallback=True, degraded=True, attempts=plan.attempt_pairs())

    def _publish_request(self, plan: ChainPlan, answer: Answer | None, elapsed: float) -> None:
        """One request's metrics, from its plan and its answer (None: given up half-way). Each
        call counts what this request saw from that upstream (the canary analysis reads it)."""
        m = self.metrics
        for decision in plan.retries:
            m.retries.labels(decision.value).inc()
        for a in plan.attempts:
            if a.outcome == LIMITED:
                continue  # refused by its limit: no call went out (the canary judge counts calls)
            m.upstream_call(a.upstream, a.outcome, a.seconds)
        if answer is None:
            return
        version = answer.scores[0]["model_version"]
        outcome = "degraded" if answer.degraded else "fallback" if answer.fallback else "ok"
        m.requests.labels(answer.variant, version, outcome).inc(len(answer.scores))
        m.latency.labels(answer.variant, version).observe(elapsed)

    def _verdict_for(self, upstream: str) -> Callable[[CallResult], None]:
        """The breaker's verdict on one HTTP call (however many requests it carried)."""
        breaker = self.breakers[upstream]

        def verdict(result: CallResult) -> None:
            if result.outcome is Outcome.OK:
                breaker.record_success()
            elif result.outcome.is_failure:
                breaker.record_failure(result.outcome.value)
            # overload (503/429): busy, not broken: shed the load, do not trip

        return verdict

    @staticmethod
    def _scores(result: CallResult) -> list[dict[str, Any]]:
        assert result.rows is not None
        return [{"probability": float(r["probability"]), "label": int(r["label"]), "model": str(r["model"]),
                 "model_version": str(r["model_version"])} for r in result.rows]

    def entity_of(self, row: Mapping[str, Any]) -> str | None:
        """The row's entity key (sticky routing), when the project declares one."""
        key = self.schema.entity_key
        return row.get(key) if key else None

    def _rules(self, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        rs = self.ruleset
        probs = rs.score_records(rows)
        return [{"probability": float(p), "label": int(p >= rs.threshold), "model": routing.RULES,
                 "model_version": rs.version} for p in probs]

    # --- feature log and shadow ----------------------------------------------------------
    def _log_primary(self, row: Mapping[str, Any], out: Mapping[str, Any], now: str) -> None:
        answer = {"variant": out["variant"], "model": out["model"], "model_version": out["model_version"],
                  "probability": out["probability"], "label": out["label"]}
        self.feature_log.append(LogRecord(
            request_id=out["request_id"], kind="primary", ts=now,
            data={**answer, "fallback": out["fallback"], "degraded": out["degraded"], "latency_ms": out["latency_ms"],
                  "entity": row.get(self.schema.entity_key) if self.schema.entity_key else None,
                  "features": {n: row[n] for n in self.schema.feature_names}}))

    def _maybe_shadow(self, rows: list[dict[str, Any]], out: list[dict[str, Any]], primary: str) -> None:
        shadow = self.state.shadow
        if not shadow.enabled or shadow.target == primary:
            return
        # shadow traffic goes first under load: it gets only a share of the worker's admission
        # limit and of its target's limit, besides its own bound
        limit = self.limits.get(target := shadow.target)
        if (self.shadow_in_flight >= self.s.shadow_max_in_flight
                or not self.admission.admit(self.admission.in_flight, Kind.SHADOW).admitted
                or (limit is not None and not limit.try_acquire(Kind.SHADOW).admitted)):
            self.shadow_dropped += 1
            self.metrics.shadow_calls.labels("dropped").inc()
            self.metrics.shed.labels("shadow").inc()
            return
        self.shadow_in_flight += 1
        task = asyncio.get_running_loop().create_task(self._shadow_call(target, rows, out, limit))
        task.add_done_callback(self._shadow_done)

    def _shadow_done(self, _task: asyncio.Task[None]) -> None:
        self.shadow_in_flight -= 1

    async def _shadow_call(self, target: str, rows: list[dict[str, Any]], out: list[dict[str, Any]],
                           limit: ConcurrencyLimit | None) -> None:
        body = json.dumps({"rows": rows}).encode()
        result: CallResult | None = None
        try:
            result = await self.upstreams[target].predict(body, len(rows), self.s.shadow_timeout_ms / 1000.0)
        finally:
            if limit is not None:
                limit.release(None if result is None else result.seconds,
                              dropped=result is not None and result.outcome.value in DROPPED)
        # a shadow call is a call to its upstream: counted with the primary calls (the rollout's
        # shadow stage judges the canary's errors and latency on them)
        self.metrics.upstream_call(target, result.outcome.value, result.seconds)
        if result.outcome is not Outcome.OK:
            self.metrics.shadow_calls.labels("error").inc()
            return
        self.metrics.shadow_calls.labels("ok").inc()
        now = f"{time.time():.3f}"
        for primary, sc in zip(out, self._scores(result), strict=True):
            agree = sc["label"] == primary["label"]
            self._agreement.append(agree)
            self.metrics.shadow_compared.labels(str(agree).lower()).inc()
            answer = {"variant": target, "model": sc["model"], "model_version": sc["model_version"],
                      "probability": sc["probability"], "label": sc["label"]}
            self.feature_log.append(LogRecord(
                request_id=primary["request_id"], kind="shadow", ts=now,
                data={**answer, "primary_label": primary["label"], "agree": agree,
                      "latency_ms": round(result.seconds * 1000.0, 3)}))
        self.metrics.shadow_agreement.set(sum(self._agreement) / len(self._agreement))

    # --- views ---------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """This worker's view (with two workers or more, each answers for itself: its breakers,
        in-flight count, feature-log and shadow counters; the control state is everyone's)."""
        stats = self.feature_log.stats
        return {
            "worker": {"instance_id": self.metrics.instance_id, "pid": self.metrics.pid},
            "control": self.state.describe(),
            "effective_weights": self.effective_weights(),
            "breakers": {name: {"state": b.state.value, "capacity": b.capacity()} for name, b in self.breakers.items()},
            "transitions": list(self.transitions),
            "feature_log": {"written": stats.written, "dropped": stats.dropped, "spilled": stats.spilled,
                            "replayed": stats.replayed, "buffered": self.feature_log.buffered,
                            "flush_errors": stats.flush_errors, "redis_up": stats.redis_up,
                            "last_error": stats.last_error},
            "shadow": {"in_flight": self.shadow_in_flight, "dropped": self.shadow_dropped,
                       "agreement": (sum(self._agreement) / len(self._agreement)) if self._agreement else None},
            "upstreams": self.addresses,
            "in_flight": self.in_flight,
            # adaptive concurrency limits of this worker: admission, and each variant's
            "limits": {"admission": self.admission.describe(),
                       **{v: limit.describe() for v, limit in self.limits.items()}},
        }
