"""PyTorch MLP scorer (port 8002): `bentoml serve bentos.torch_scorer:TorchScorer -p 8002`.
Runs on CUDA where there is one (HEALMESH_TORCH_DEVICE=auto), on the CPU otherwise."""

import bentoml

from healmesh.bento_store import MLP_BENTO_MODEL, builtin_reference
from healmesh.serving.admin import admin_app
from healmesh.serving.scorer import ModelScorer, predict_api, service_config, with_fault_hook
from healmesh.settings import get_settings

S = get_settings()


@with_fault_hook
@bentoml.service(name="torch_scorer", **service_config(S))
@bentoml.asgi_app(admin_app(), path="/admin")
class TorchScorer(ModelScorer):
    scorer_name = "pytorch"
    model_kind = "mlp"
    builtin_model = builtin_reference(MLP_BENTO_MODEL)

    predict = predict_api("stable", max_batch_size=S.torch_max_batch_size, max_latency_ms=S.torch_max_latency_ms)
    predict_canary = predict_api("canary", max_batch_size=S.torch_max_batch_size, max_latency_ms=S.torch_max_latency_ms)
