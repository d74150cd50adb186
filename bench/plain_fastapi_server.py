"""The usual hand-rolled way, for comparison: FastAPI + uvicorn, one request scored at a time.

Two ways to run it:

- the whole mesh's work in one hop (``bench/overload_bench.py``): both bundles the mesh serves,
  each request routed 80 % XGBoost / 20 % PyTorch (by the card id's hash when the request has
  one, as the gateway's sticky routing does; at random otherwise), ``--workers`` uvicorn
  workers (default: as many as the gateway has by default)::

      python bench/plain_fastapi_server.py --xgb-bundle DIR --torch-bundle DIR --port 8101

- one model, one worker (``bench/scorer_bench.py``, against one scorer)::

      python bench/plain_fastapi_server.py --bundle DIR --port 8101

Either way: ``POST /predict`` with a list of transactions, the scorers' validation model
(``healmesh.schema.active().transaction``) and answer model (``Score``), no batching, no access log,
``GET /readyz`` for readiness, and the serving processes' GC tuning
(``healmesh.heap.freeze_heap``) applied at start in every worker.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import uvicorn  # noqa: E402
from fastapi import FastAPI  # noqa: E402

from healmesh import schema  # noqa: E402
from healmesh.heap import freeze_heap  # noqa: E402
from healmesh.models.bundle import Bundle, find_bundle, load_bundle  # noqa: E402
from healmesh.policies.routing import key_point  # noqa: E402

ENTITY_KEY = schema.active().entity_key
Transaction = schema.active().transaction
from healmesh.serving.scorer import Score  # noqa: E402

CONFIG_ENV = "HEALMESH_PLAIN_SERVER_CONFIG"  # how the workers (separate processes) get their settings


def build_app(bundle_dir: str | None = None, *, xgb_dir: str | None = None, torch_dir: str | None = None,
              xgb_share: float = 0.8) -> FastAPI:
    """One model (``bundle_dir``), or XGBoost and PyTorch with ``xgb_share`` of the requests to XGBoost."""
    if bundle_dir is not None:
        models: list[Bundle] = [load_bundle(find_bundle(bundle_dir))]
    else:
        if xgb_dir is None or torch_dir is None:
            raise ValueError("give one bundle, or both the XGBoost and the PyTorch bundle")
        models = [load_bundle(find_bundle(xgb_dir)), load_bundle(find_bundle(torch_dir))]
    rng = random.Random()

    def pick(rows: list[Transaction]) -> Bundle:  # type: ignore[valid-type]
        if len(models) == 1:
            return models[0]
        key = getattr(rows[0], ENTITY_KEY, None) if rows else None
        point = key_point(key) if key else rng.random()
        return models[0] if point < xgb_share else models[1]

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        freeze_heap()  # in each worker, after its models are loaded: they stay out of the collector's view
        yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/readyz")
    def ready() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/predict")
    def predict(rows: list[Transaction]) -> list[Score]:  # type: ignore[valid-type]
        bundle = pick(rows)
        probs = bundle.predict_records([r.model_dump() for r in rows])
        return [Score(probability=float(p), label=int(p >= bundle.meta.threshold), model=bundle.meta.kind,
                      model_version="bench") for p in probs]

    return app


def app_from_env() -> FastAPI:
    """The app factory each uvicorn worker calls (``--workers`` > 1 starts them as processes)."""
    config: dict[str, Any] = json.loads(os.environ[CONFIG_ENV])
    return build_app(config.get("bundle"), xgb_dir=config.get("xgb"), torch_dir=config.get("torch"),
                     xgb_share=config.get("xgb_share", 0.8))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", help="one model bundle (or a directory above it), one worker unless --workers")
    ap.add_argument("--xgb-bundle", help="the XGBoost bundle (with --torch-bundle)")
    ap.add_argument("--torch-bundle", help="the PyTorch bundle (with --xgb-bundle)")
    ap.add_argument("--xgb-share", type=float, default=0.8, help="share of requests scored by XGBoost (default 0.8)")
    ap.add_argument("--workers", type=int, default=None,
                    help="uvicorn worker processes (default: 1 with --bundle, else the gateway's default)")
    ap.add_argument("--port", type=int, default=8101)
    args = ap.parse_args()
    if (args.bundle is None) == (args.xgb_bundle is None or args.torch_bundle is None):
        ap.error("give --bundle, or --xgb-bundle and --torch-bundle")
    workers = args.workers
    if workers is None:
        from healmesh.settings import default_gateway_workers

        workers = 1 if args.bundle else default_gateway_workers()
    os.environ[CONFIG_ENV] = json.dumps({"bundle": args.bundle, "xgb": args.xgb_bundle, "torch": args.torch_bundle,
                                         "xgb_share": args.xgb_share})
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # the workers import this module by name
    uvicorn.run("plain_fastapi_server:app_from_env", factory=True, host="127.0.0.1", port=args.port,
                workers=workers, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
