"""XGBoost scorer (port 8001): `bentoml serve bentos.xgboost_scorer:XGBoostScorer -p 8001`."""

import bentoml

from healmesh.bento_store import XGB_BENTO_MODEL, builtin_reference
from healmesh.serving.admin import admin_app
from healmesh.serving.scorer import ModelScorer, predict_api, service_config, with_fault_hook
from healmesh.settings import get_settings

S = get_settings()


@with_fault_hook
@bentoml.service(name="xgboost_scorer", **service_config(S))
@bentoml.asgi_app(admin_app(), path="/admin")
class XGBoostScorer(ModelScorer):
    scorer_name = "xgboost"
    model_kind = "xgboost"
    builtin_model = builtin_reference(XGB_BENTO_MODEL)

    predict = predict_api("stable", max_batch_size=S.xgb_max_batch_size, max_latency_ms=S.xgb_max_latency_ms)
    predict_canary = predict_api("canary", max_batch_size=S.xgb_max_batch_size, max_latency_ms=S.xgb_max_latency_ms)
