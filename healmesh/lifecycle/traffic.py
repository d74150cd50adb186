"""Traffic with known ground truth, for the demo and the lifecycle tests: generated
transactions (optionally drifted) sent to the gateway, then their true labels sent back
through /feedback, and the live quality of each model version computed from the answers.
Bounded in requests and time; 127.0.0.1 / localhost only."""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import httpx
import numpy as np

from healmesh import schema
from healmesh.data import NO_DRIFT, DriftSpec, generate
from healmesh.errors import ConfigError


@dataclass
class TrafficResult:
    sent: int = 0
    answered: int = 0
    errors: Counter[int] = field(default_factory=Counter)
    labelled: int = 0
    variants: Counter[str] = field(default_factory=Counter)
    # (model, model_version) -> [(label, probability)]
    scored: dict[tuple[str, str], list[tuple[int, float]]] = field(default_factory=lambda: defaultdict(list))
    seconds: float = 0.0

    def auc(self, model: str | None = None, version: str | None = None) -> float | None:
        from sklearn.metrics import roc_auc_score

        pairs = [p for (m, v), ps in self.scored.items() if (model is None or m == model)
                 and (version is None or v == version) for p in ps]
        labels = np.array([p[0] for p in pairs])
        if len(pairs) < 50 or labels.min(initial=0) == labels.max(initial=0):
            return None
        return float(roc_auc_score(labels, [p[1] for p in pairs]))

    def merge(self, other: TrafficResult) -> None:
        self.sent += other.sent
        self.answered += other.answered
        self.errors.update(other.errors)
        self.labelled += other.labelled
        self.variants.update(other.variants)
        for key, pairs in other.scored.items():
            self.scored[key].extend(pairs)
        self.seconds += other.seconds


def _local(url: str) -> str:
    host = urlparse(url).hostname
    if host not in ("127.0.0.1", "localhost"):
        raise ConfigError(f"demo traffic only goes to this machine, not {host}")
    return url.rstrip("/")


async def send(gateway_url: str, n: int, *, seed: int, drift: DriftSpec = NO_DRIFT, batch: int = 1,
               concurrency: int = 16, feedback: bool = True, deadline_s: float = 600.0) -> TrafficResult:
    """``n`` transactions in requests of ``batch`` rows; then their labels (unless told not to)."""
    base = _local(gateway_url)
    frame = generate(n, seed=seed, drift=drift)
    cols = list(schema.active().feature_names) + [schema.active().entity_key]
    rows = [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in frame[cols].to_dict("records")]
    truth = frame[schema.active().label].to_numpy()
    chunks = [(i, rows[i:i + batch]) for i in range(0, n, batch)]
    result = TrafficResult(sent=n)
    labels: list[dict[str, Any]] = []
    stop_at = time.monotonic() + deadline_s
    t0 = time.perf_counter()
    queue: asyncio.Queue[tuple[int, list[dict[str, Any]]]] = asyncio.Queue()
    for c in chunks:
        queue.put_nowait(c)
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=concurrency)) as client:
        async def worker() -> None:
            while not queue.empty() and time.monotonic() < stop_at:
                start, body = queue.get_nowait()
                try:
                    r = await client.post(f"{base}/api/v1/predict", json=body if batch > 1 else body[0])
                except httpx.HTTPError:
                    result.errors[0] += len(body)
                    continue
                if r.status_code != 200:
                    result.errors[r.status_code] += len(body)
                    continue
                answers = r.json() if batch > 1 else [r.json()]
                for k, a in enumerate(answers):
                    y = int(truth[start + k])
                    result.answered += 1
                    result.variants[a["variant"]] += 1
                    result.scored[(a["model"], a["model_version"])].append((y, a["probability"]))
                    labels.append({"request_id": a["request_id"], "label": y})

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        if feedback and labels:
            result.labelled += await post_labels(client, base, labels)
    result.seconds = time.perf_counter() - t0
    return result


def labeller_headers() -> dict[str, str]:
    """The labeller's credential, as `make up` keeps it (HEALMESH_LABELLER_TOKEN or its file)."""
    from healmesh.credentials import labeller_token
    from healmesh.settings import get_settings

    return {"Authorization": f"Bearer {labeller_token(get_settings())}"}


async def post_labels(client: httpx.AsyncClient, base: str, labels: list[dict[str, Any]],
                      wait_s: float = 10.0) -> int:
    """Send labels in batches of 1,000; returns how many are stored. A label is accepted once the
    gateway has logged its request (off the hot path, within a flush interval): ids not logged
    yet are sent again until ``wait_s`` has passed."""
    headers = labeller_headers()
    stored = 0
    pending = labels
    give_up = time.monotonic() + wait_s
    while pending:
        unknown: set[str] = set()
        for i in range(0, len(pending), 1_000):
            r = await client.post(f"{base}/api/v1/feedback/batch", json=pending[i:i + 1_000], headers=headers)
            r.raise_for_status()
            body = r.json()
            stored += body["stored"] + body["unchanged"]
            unknown.update(body["unknown"])
        pending = [x for x in pending if x["request_id"] in unknown]
        if pending:
            if time.monotonic() >= give_up:
                break
            await asyncio.sleep(0.1)
    return stored


def send_sync(gateway_url: str, n: int, **kw: Any) -> TrafficResult:
    return asyncio.run(send(gateway_url, n, **kw))


class Background:
    """Steady traffic with labels in a thread until stopped (for canary stages)."""

    def __init__(self, gateway_url: str, *, drift: DriftSpec = NO_DRIFT, chunk: int = 200, batch: int = 1,
                 concurrency: int = 8, max_seconds: float = 600.0) -> None:
        import threading

        self.url, self.drift, self.chunk, self.batch, self.concurrency = gateway_url, drift, chunk, batch, concurrency
        self.result = TrafficResult()
        self._stop = threading.Event()
        self._deadline = time.monotonic() + max_seconds
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        seed = 10_000
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            seed += 1
            self.result.merge(send_sync(self.url, self.chunk, seed=seed, drift=self.drift, batch=self.batch,
                                        concurrency=self.concurrency))

    def __enter__(self) -> Background:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=120)
