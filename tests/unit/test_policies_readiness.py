"""Tests healmesh.policies.readiness: gateway readiness (the model variants answer) and workers'
liveness (pure, clock passed in)."""

from healmesh.policies.readiness import decide

WEIGHTS = {"xgboost_stable": 0.8, "xgboost_canary": 0.0, "pytorch": 0.2}


def verdict(answering, now=10.0, was_ready=False, grace_s=60.0):
    return decide(WEIGHTS, answering, started_at=0.0, now=now, grace_s=grace_s, was_ready=was_ready)


def test_not_ready_until_every_weighted_variant_answered():
    assert not verdict({}).ready  # nothing checked yet: a fresh gateway must not take traffic
    starting = verdict({"xgboost_stable": None, "pytorch": "pytorch /readyz does not answer 200"})
    assert not starting.ready and "pytorch" in starting.reason and "starting" in starting.reason
    ready = verdict({"xgboost_stable": None, "pytorch": None})
    assert ready.ready and "xgboost_canary" not in ready.reason  # a variant without weight is not waited for


def test_one_variant_that_never_starts_does_not_hold_the_gateway_forever():
    answering = {"xgboost_stable": None, "pytorch": "connection refused"}
    assert not verdict(answering, now=59.0).ready
    late = verdict(answering, now=60.0)
    assert late.ready and "pytorch: connection refused" in late.reason


def test_once_ready_one_answering_variant_keeps_it_ready_none_does_not():
    assert verdict({"xgboost_stable": None, "pytorch": "timeout"}, was_ready=True).ready
    gone = verdict({"xgboost_stable": "refused", "pytorch": "timeout"}, was_ready=True, now=1_000.0)
    assert not gone.ready
    assert gone.reason == "no model variant answers (pytorch: timeout; xgboost_stable: refused)"


# --- liveness: a server short of its workers too long ------------------------------------------------

def test_a_server_short_of_workers_for_the_grace_period_is_not_alive():
    from healmesh.policies.readiness import workers_alive

    verdict, since = workers_alive(2, 2, None, now=100.0, grace_s=60)
    assert verdict.ready and since is None
    verdict, since = workers_alive(1, 2, None, now=100.0, grace_s=60)  # one died: the clock starts
    assert verdict.ready and since == 100.0 and "1 of 2" in verdict.reason
    verdict, since = workers_alive(1, 2, since, now=159.0, grace_s=60)
    assert verdict.ready and since == 100.0
    verdict, since = workers_alive(1, 2, since, now=160.0, grace_s=60)  # nobody replaced it
    assert not verdict.ready and "not replaced" in verdict.reason and since == 100.0
    verdict, since = workers_alive(2, 2, since, now=161.0, grace_s=60)  # replaced: the clock stops
    assert verdict.ready and since is None
    verdict, since = workers_alive(None, 2, 100.0, now=1_000.0, grace_s=60)  # unknown never kills
    assert verdict.ready and since is None
