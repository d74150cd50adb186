"""The gateway service's typed predict API, called without a server (a stand-in core)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

from healmesh import schema
from healmesh.errors import Saturated


def _call(core: Any, rows: list[Any]) -> Any:
    from gateway.service import Gateway

    return asyncio.run(Gateway.apis["predict"].func(SimpleNamespace(core=core), rows))


def test_typed_predict_routes_by_the_first_cards_key_and_answers_the_cores_rows():
    from healmesh.gateway.api import PredictAnswer

    calls = []

    class Core:
        async def predict(self, rows: list[dict[str, Any]], key: str | None) -> tuple[list[dict[str, Any]], None]:
            calls.append((rows, key))
            return [{"request_id": "0" * 32, "probability": 0.25, "label": 0, "model": "xgboost", "model_version": "1",
                     "variant": "xgboost_stable", "fallback": False, "degraded": False, "latency_ms": 1.5}
                    for _ in rows], None

    rows = [schema.active().transaction(**schema.active().example_row(), card_id=card) for card in ("card-7", "card-8")]
    out = _call(Core(), rows)
    assert calls == [([r.model_dump() for r in rows], "card-7")]
    assert [type(a) for a in out] == [PredictAnswer, PredictAnswer] and out[0].variant == "xgboost_stable"


def test_typed_predict_sheds_with_503_and_retry_after_in_whole_seconds():
    class Full:
        async def predict(self, rows: list[dict[str, Any]], key: str | None) -> None:
            raise Saturated(1.2)  # what a limit may ask for

    answer = _call(Full(), [schema.active().transaction(**schema.active().example_row())])
    assert answer.status_code == 503 and answer.headers["retry-after"] == "2"
    assert json.loads(answer.body) == {"error": "gateway saturated"}
