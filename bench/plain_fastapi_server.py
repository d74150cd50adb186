"""The usual hand-rolled way, for comparison: FastAPI + uvicorn, one request scored at a time.

Same model bundle, same request body and validation model as the XGBoost scorer:
    python bench/plain_fastapi_server.py --bundle DIR --port 8101
"""

from __future__ import annotations

import argparse

import uvicorn
from fastapi import FastAPI

from healmesh.models.bundle import find_bundle, load_bundle
from healmesh.schema import Transaction
from healmesh.serving.scorer import Score


def build_app(bundle_dir: str) -> FastAPI:
    bundle = load_bundle(find_bundle(bundle_dir))
    app = FastAPI()

    @app.post("/predict")
    def predict(rows: list[Transaction]) -> list[Score]:  # type: ignore[valid-type]
        probs = bundle.predict_records([r.model_dump() for r in rows])
        return [Score(probability=float(p), label=int(p >= bundle.meta.threshold), model=bundle.meta.kind,
                      model_version="bench") for p in probs]

    return app


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--port", type=int, default=8101)
    args = ap.parse_args()
    uvicorn.run(build_app(args.bundle), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
