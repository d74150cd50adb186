"""The mesh bento's entry service: one `bentoml serve` starts it and the three scorers, each
in its own worker processes. Until the gateway lands this entry only dispatches a batch to a
named scorer (`POST /score`), which is enough to call every scorer through the composition.
"""

from typing import Literal

import bentoml

from bentos.fallback_scorer import FallbackScorer
from bentos.torch_scorer import TorchScorer
from bentos.xgboost_scorer import XGBoostScorer
from healmesh.schema import Transaction
from healmesh.serving.scorer import Score


@bentoml.service(name="healmesh_mesh", workers=1, traffic={"timeout": 30})
class Mesh:
    xgboost = bentoml.depends(XGBoostScorer)
    pytorch = bentoml.depends(TorchScorer)
    fallback = bentoml.depends(FallbackScorer)

    @bentoml.api
    async def score(self, scorer: Literal["xgboost", "pytorch", "fallback"],
                    rows: list[Transaction]) -> list[Score]:  # type: ignore[valid-type]
        """Score `rows` with the named scorer's stable model."""
        target = {"xgboost": self.xgboost, "pytorch": self.pytorch, "fallback": self.fallback}[scorer]
        return await target.to_async.predict(rows=rows)
