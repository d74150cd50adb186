import json

import pytest

from healmesh.data import generate
from healmesh.gateway.api import ApiError, parse_predict_body
from healmesh.gateway.control import ControlState, Rollout, Shadow, parse_state, weights_for_stage
from healmesh.gateway.upstreams import Outcome, classify
from healmesh.policies import routing
from healmesh.schema import FEATURE_NAMES


def tx() -> dict:
    row = generate(1, seed=3)[list(FEATURE_NAMES)].iloc[0].to_dict()
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}


def test_parse_single_and_batch():
    rows, single = parse_predict_body(json.dumps(tx()).encode(), 10)
    assert single and len(rows) == 1 and rows[0]["card_id"] is None
    rows, single = parse_predict_body(json.dumps([tx(), tx()]).encode(), 10)
    assert not single and len(rows) == 2


@pytest.mark.parametrize("body,status,fields", [
    (b"{nope", 400, set()),
    (json.dumps([tx()] * 11).encode(), 413, set()),
    (json.dumps([]).encode(), 422, set()),
    (json.dumps(7).encode(), 422, set()),
    (json.dumps([tx(), 5]).encode(), 422, set()),
    (json.dumps(tx() | {"amount": None, "geo": "moon"}).encode(), 422, {"amount", "geo"}),
])
def test_parse_refuses_with_the_right_status(body, status, fields):
    with pytest.raises(ApiError) as exc:
        parse_predict_body(body, 10)
    assert exc.value.status == status
    if fields:
        assert {d["field"] for d in exc.value.detail} == fields


def test_rollout_stage_splits_only_the_xgboost_share():
    w = weights_for_stage(routing.DEFAULT, 10).as_dict()
    assert w == pytest.approx({"xgboost_stable": 0.72, "xgboost_canary": 0.08, "pytorch": 0.2})
    assert weights_for_stage(routing.Weights.parse(w), 0).as_dict() == pytest.approx(routing.DEFAULT.as_dict())
    with pytest.raises(ValueError, match="needs a canary_version"):
        Rollout(stage=10)
    with pytest.raises(ValueError, match="shadow target"):
        Shadow(enabled=True, target="lightgbm")


def test_control_state_parsing_is_tolerant():
    assert parse_state({}) == ControlState()
    raw = {b"weights": b'{"xgboost_stable": 1, "pytorch": 3}', b"shadow": b"not json", b"version": b"7"}
    state = parse_state(raw)
    assert state.weights.get("pytorch") == 0.75 and state.shadow == Shadow() and state.version == 7


def test_overload_is_not_failure():
    assert classify(503) is Outcome.OVERLOADED and classify(429) is Outcome.OVERLOADED
    assert classify(500) is Outcome.ERROR and classify(404) is Outcome.ERROR and classify(200) is Outcome.OK
    assert not Outcome.OVERLOADED.is_failure and Outcome.TIMEOUT.is_failure


def test_upstream_coalesces_concurrent_calls_and_splits_answers():
    import asyncio

    from healmesh.gateway.upstreams import CallResult, ScorerClient, Upstream

    sent: list[int] = []

    async def fake_predict(body: bytes, n: int, timeout_s: float) -> CallResult:
        rows = json.loads(body)["rows"]
        assert len(rows) == n
        sent.append(n)
        await asyncio.sleep(0.01)
        if any(r.get("fail") for r in rows):
            return CallResult(Outcome.ERROR, status=500)
        return CallResult(Outcome.OK, rows=[{"echo": r["i"]} for r in rows])

    async def scenario() -> None:
        up = Upstream("x", ScorerClient("http://127.0.0.1:9"), "/predict", max_in_flight=2, max_rows=8)
        up.predict = fake_predict  # type: ignore[method-assign]
        results = await asyncio.gather(*(up.call([json.dumps({"i": i}).encode()], 1.0) for i in range(20)))
        assert [r.rows[0]["echo"] for r in results] == list(range(20))  # each caller gets its own row
        assert len(sent) < 20 and max(sent) <= 8 and sum(sent) == 20
        sent.clear()
        bad = await asyncio.gather(up.call([b'{"i": 1, "fail": true}'], 1.0), up.call([b'{"i": 2}'], 1.0),
                                   up.call([b'{"i": 3}'], 1.0))
        assert bad[0].outcome is Outcome.ERROR
        expired = await up.call([b'{"i": 4}'], -1.0)
        assert expired.outcome is Outcome.TIMEOUT

    asyncio.run(scenario())
