"""`healmesh replay` against a real gateway (real scorers, real Redis): every row of the file
answered, its label stored after the delay, no label column in what the gateway logged, and
the summary agreeing with what Redis holds."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import redis
from sklearn.metrics import roc_auc_score

from healmesh import schema
from healmesh.control import keys
from healmesh.data import generate
from healmesh.ops import procs, replay

from .conftest import scorer_urls, start_gateway

pytestmark = pytest.mark.integration
PREFIX = "hm-replay"  # a gateway of its own: its streams hold this test's records only
LABELS_AFTER_S = 2.0


@pytest.fixture(scope="module")
def replay_gateway(scorers, redis_srv, session_dir) -> Iterator[procs.ServerProcess]:
    server = start_gateway(session_dir, redis_srv.port, scorer_urls(scorers), tag="replay")
    yield server
    server.stop()


def test_replay_answers_every_row_and_labels_arrive_after_the_delay(replay_gateway, redis_srv, tmp_path):
    s = schema.active()
    frame = generate(400, seed=4_242, positive_rate=0.1)
    chosen = frame.iloc[50:350]
    assert chosen[s.label].nunique() == 2  # both classes: the summary has an AUC to compare
    path = tmp_path / "later.csv"
    frame.to_csv(path, index=False)  # with the generator's extra column, which replay must not send

    t0 = time.monotonic()
    summary = replay.run(path, gateway=replay_gateway.url, rows=(50, 350),
                         options=replay.Options(labels_after=LABELS_AFTER_S, concurrency=8))
    took = time.monotonic() - t0
    print(f"\nreplay of 300 rows: {took:.1f} s\n{summary.format()}")
    assert took < 60

    assert summary.rows == summary.sent == summary.answered == 300 and summary.errors == {}
    assert summary.labels_sent == summary.labels_accepted == 300 and summary.labels_refused == {}
    assert summary.clean and summary.elapsed_s >= LABELS_AFTER_S
    answers = {a.request_id: a for a in summary.answers}
    assert len(answers) == 300

    r = redis.Redis(port=redis_srv.port, decode_responses=True)
    try:
        pipe = r.pipeline()
        for rid in answers:
            pipe.hget(keys.bucket_key(PREFIX, rid), keys.label_field(rid))
        stored = dict(zip(answers, pipe.execute(), strict=True))
        feedback = [f for _, f in r.xrange(keys.feedback_stream(PREFIX))]
        logged = [f for _, f in r.xrange(keys.stream(PREFIX)) if f["kind"] == "primary"]
    finally:
        r.close()

    # each answered request holds the file's label, stored once, after the delay
    assert stored == {rid: str(a.label) for rid, a in answers.items()}
    assert Counter(f["request_id"] for f in feedback) == Counter(set(answers))
    for f in feedback:
        rid = f["request_id"]
        assert int(f["label"]) == answers[rid].label
        waited = float(f["ts"]) - keys.answered_at(rid)  # both wall clocks of this machine
        assert waited >= LABELS_AFTER_S - 0.05, f"{rid}'s label came {waited:.2f} s after its answer"

    # every row logged once, from the features alone: the label column never reached the gateway
    records = {f["request_id"]: json.loads(f["data"]) for f in logged}
    assert len(logged) == len(records) == 300 and set(records) == set(answers)
    for data in records.values():
        assert set(data["features"]) == set(s.feature_names)
        assert s.label not in data and s.label not in data["features"]
    assert Counter(d["entity"] for d in records.values()) == Counter(chosen[s.entity_key])

    # the summary's numbers are Redis's
    assert summary.by_variant == dict(Counter(d["variant"] for d in records.values()))
    assert all(records[rid]["probability"] == pytest.approx(a.probability) for rid, a in answers.items())
    labels = {f["request_id"]: int(f["label"]) for f in feedback}
    ids = sorted(records)
    assert summary.auc == pytest.approx(roc_auc_score([labels[i] for i in ids],
                                                      [records[i]["probability"] for i in ids]))
    assert sorted(labels.values()) == sorted(int(y) for y in chosen[s.label])
