"""The archive's pure decisions: parts by hour, names that sort as ids, where a run resumes,
trimmed rows noticed, hot/cold/expired labels and how the feedback log resolves them."""

from __future__ import annotations

import calendar

import pytest

from healmesh.policies.archive import (
    LabelAge,
    LabelEntry,
    StreamId,
    days_newest_first,
    expired_days,
    label_age,
    part_key,
    part_range,
    plan_parts,
    resolve_labels,
    resume_after,
    rows_lost,
)

H = 3_600_000
T0 = calendar.timegm((2026, 12, 2, 10, 59, 0)) * 1000  # 10:59 UTC


def test_stream_ids_order_as_redis_orders_them_and_names_sort_the_same_way():
    ids = [StreamId.parse(s) for s in ("9-0", "10-0", "10-1", "10-10", "100-2")]
    assert ids == sorted(ids)
    assert [i.name for i in ids] == sorted(i.name for i in ids)
    assert str(StreamId.parse("1733136000000-7")) == "1733136000000-7"
    with pytest.raises(ValueError, match="must be <ms>-<seq>"):
        StreamId.parse("*")


def test_a_part_key_names_its_hour_and_its_range_and_reads_back():
    first, last = StreamId(T0, 0), StreamId(T0 + 1_000, 3)
    key = part_key("features", first, last)
    assert key.startswith("features/dt=2026-12-02/hour=10/part-")
    assert part_range(key) == (first, last)
    assert part_range("features/dt=2026-12-02/hour=10/.tmp-abc-part.parquet") is None


def test_a_batch_is_cut_at_each_hour_and_at_max_rows():
    ids = [f"{T0 + i * 20_000}-0" for i in range(6)]  # 10:59:00 .. 11:00:40: three before 11:00, three after
    parts = plan_parts("features", ids, max_rows=1_000)
    assert [(p.start, p.stop) for p in parts] == [(0, 3), (3, 6)]
    assert "hour=10/" in parts[0].key and "hour=11/" in parts[1].key
    assert [(p.start, p.stop) for p in plan_parts("labels", ids, max_rows=2)] == [(0, 2), (2, 3), (3, 5), (5, 6)]
    assert plan_parts("features", [], max_rows=5) == []
    # every entry in exactly one part, in order
    for n in (1, 2, 4, 7):
        parts = plan_parts("features", ids, max_rows=n)
        assert [i for p in parts for i in range(p.start, p.stop)] == list(range(6))


def test_a_run_resumes_after_the_highest_last_id_and_ignores_what_is_not_a_part():
    keys = [part_key("features", StreamId(T0, 0), StreamId(T0 + 5, 0)),
            part_key("features", StreamId(T0 + 6, 0), StreamId(T0 + H, 2)),
            "features/dt=2026-12-02/hour=11/.tmp-x-part.parquet", "features/README"]
    assert resume_after(keys) == StreamId(T0 + H, 2)
    assert resume_after([]) is None


def test_days_are_listed_newest_first_back_past_the_retention():
    now = T0 / 1000
    days = days_newest_first("labels", now, retention_s=2 * 86_400)
    assert days == ["labels/dt=2026-12-02/", "labels/dt=2026-12-01/", "labels/dt=2026-11-30/",
                    "labels/dt=2026-11-29/"]
    gone = expired_days("labels", now, retention_s=2 * 86_400, lookback_days=2)
    # the cutoff is 2026-11-30 10:59: that day still holds rows within the retention; the 29th does not
    assert gone == ["labels/dt=2026-11-29/", "labels/dt=2026-11-28/"]
    assert not set(gone) & set(days[:3])


def test_rows_may_be_lost_only_when_the_last_archived_entry_left_redis_before_newer_ones():
    assert rows_lost(StreamId(10, 0), resume_kept=False, first=StreamId(12, 0))
    assert not rows_lost(StreamId(10, 0), resume_kept=True, first=StreamId(9, 0))  # still there
    assert not rows_lost(StreamId(10, 0), resume_kept=False, first=None)  # nothing newer to miss
    assert not rows_lost(None, resume_kept=False, first=StreamId(99, 0))  # nothing archived yet: no checkpoint


@pytest.mark.parametrize(("age", "cold", "expected"), [
    (0, 30 * 86_400, LabelAge.HOT), (3_600, 30 * 86_400, LabelAge.HOT), (3_601, 30 * 86_400, LabelAge.COLD),
    (30 * 86_400, 30 * 86_400, LabelAge.COLD), (30 * 86_400 + 1, 30 * 86_400, LabelAge.EXPIRED),
    (3_601, None, LabelAge.EXPIRED)])
def test_a_label_is_hot_cold_or_expired_by_its_answer_age(age, cold, expected):
    now = 1_800_000_000.0
    assert label_age(now - age, now, hot_s=3_600, cold_s=cold) is expected


def test_the_first_label_stands_and_only_a_correction_replaces_it():
    log = [LabelEntry("a", 1, False), LabelEntry("b", 0, False), LabelEntry("a", 0, False),  # a conflict: ignored
           LabelEntry("b", 0, False),  # a repeat
           LabelEntry("b", 1, True)]  # an admin's correction
    assert resolve_labels(log) == {"a": 1, "b": 1}
    assert resolve_labels([]) == {}
