"""Tests healmesh.control.keys: request ids and the feature log's key layout."""

from healmesh.control import keys


def test_request_ids_carry_their_answer_time_and_sort_by_it():
    a, b = keys.new_request_id(1_700_000_000.0), keys.new_request_id(1_700_000_000.5)
    assert len(a) == 32 and keys.REQUEST_ID.match(a) and a != keys.new_request_id(1_700_000_000.0)
    assert keys.answered_at(a) == 1_700_000_000.0 and a < b
    assert keys.answered_at("nope") is None and keys.bucket_key("p", "nope") is None
    assert keys.bucket_key("p", a) == f"p:req:{1_700_000_000 // 60}"


def test_a_minute_hash_outlives_its_last_answer_by_the_retention():
    ts = 1_700_000_059.9  # the last moment of its minute
    assert keys.bucket_expires_at(ts, 3600) - ts >= 3600
    assert keys.bucket_expires_at(1_700_000_040.0, 3600) == keys.bucket_expires_at(ts, 3600)
    assert keys.min_stream_id(1_700_000_000.0, 60) == "1699999940000-0"
