"""A small bounded load generator for tests (127.0.0.1 only)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import httpx

from healmesh import schema
from healmesh.data import DriftSpec, generate


@dataclass
class Reply:
    status: int
    body: Any
    started: float
    latency: float
    index: int = -1  # position of the request body in the input
    headers: dict[str, str] | None = None
    sent_after: float = 0.0  # wall clock just before the request was sent (comparable with a server's)


def transactions(n: int, seed: int = 0, drift: DriftSpec | None = None) -> list[dict[str, Any]]:
    s = schema.active()
    frame = generate(n, seed=seed, drift=drift or DriftSpec())[list(s.feature_names) + [s.entity_key]]
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in r.items()} for r in frame.to_dict("records")]


async def hammer(url: str, bodies: Sequence[Any], concurrency: int, timeout: float = 30.0,
                 headers: dict[str, str] | None = None) -> list[Reply]:
    host = urlparse(url).hostname
    assert host in ("127.0.0.1", "localhost"), f"load tests only talk to this machine, not {host}"
    replies: list[Reply] = []
    queue: asyncio.Queue[Any] = asyncio.Queue()
    for item in enumerate(bodies):
        queue.put_nowait(item)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout, limits=limits, headers=headers) as client:
        async def worker() -> None:
            while True:
                try:
                    index, body = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                t0, wall = time.perf_counter(), time.time()
                try:
                    r = await client.post(url, json=body)
                    content = r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text
                    replies.append(Reply(r.status_code, content, t0, time.perf_counter() - t0, index,
                                         dict(r.headers), wall))
                except httpx.HTTPError as exc:
                    replies.append(Reply(0, repr(exc), t0, time.perf_counter() - t0, index))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return replies


def run(url: str, bodies: Sequence[Any], concurrency: int, **kw: Any) -> list[Reply]:
    return asyncio.run(hammer(url, bodies, concurrency, **kw))
