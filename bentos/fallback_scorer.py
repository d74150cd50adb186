"""Rule-based fallback scorer (port 8003): `bentoml serve bentos.fallback_scorer:FallbackScorer -p 8003`.
Imports neither xgboost nor torch (tests/integration/test_scorers.py checks the served process)."""

import bentoml

from healmesh.serving.admin import admin_app
from healmesh.serving.scorer import RulesScorer, predict_api, service_config, with_fault_hook
from healmesh.settings import get_settings

S = get_settings()


@with_fault_hook
@bentoml.service(name="fallback_scorer", **service_config(S))
@bentoml.asgi_app(admin_app(), path="/admin")
class FallbackScorer(RulesScorer):
    scorer_name = "fallback"

    predict = predict_api("stable", max_batch_size=S.fallback_max_batch_size,
                          max_latency_ms=S.fallback_max_latency_ms)
