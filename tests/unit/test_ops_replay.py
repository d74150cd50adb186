"""`healmesh replay`'s pure parts (pacing, the label schedule, the summary, the URL check), the
file check (nothing sent for a file that does not fit), and the run against a mock gateway."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from healmesh import schema
from healmesh.data import generate
from healmesh.errors import ConfigError, InvalidData
from healmesh.ops import cli, replay
from healmesh.ops.replay import (
    Answer,
    LabelSchedule,
    Options,
    PendingLabel,
    Tally,
    feedback_outcome,
    loopback_url,
    pace_delay,
    parse_rows,
    retry_after_s,
    retry_or_refuse,
    spans,
    summarize,
)

# --- arguments ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "want"), [("10:20", (10, 20)), (":5", (0, 5)), ("3:", (3, None)), ("0:1", (0, 1))])
def test_parse_rows(text: str, want: tuple[int, int | None]) -> None:
    assert parse_rows(text) == want


@pytest.mark.parametrize("text", ["5:5", "9:2", "a:b", "10", "-1:4", ""])
def test_parse_rows_refuses(text: str) -> None:
    with pytest.raises(ConfigError, match="START:STOP"):
        parse_rows(text)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8000/", "http://127.8.9.10:1", "http://localhost:3000",
                                 "http://[::1]:8000", "https://LOCALHOST"])
def test_loopback_urls_pass(url: str) -> None:
    assert loopback_url(url) == url.rstrip("/")


@pytest.mark.parametrize("url", ["http://10.0.0.1:8000", "http://example.com", "http://0.0.0.0:8000",
                                 "http://127.0.0.1.example.com", "http://localhost.example.com",
                                 "http://127.0.0.1@example.com", "http://[2001:db8::1]:80", "ftp://127.0.0.1",
                                 "127.0.0.1:8000", "http://128.0.0.1"])
def test_other_hosts_are_refused(url: str) -> None:
    with pytest.raises(ConfigError):
        loopback_url(url)


def test_a_remote_gateway_is_refused_before_the_file_is_read(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="this machine"):
        replay.run(tmp_path / "absent.csv", gateway="http://192.168.1.5:8000")


@pytest.mark.parametrize("options", [Options(rate=0), Options(labels_after=-1), Options(batch=0),
                                     Options(batch=501), Options(concurrency=0)])
def test_options_out_of_range_are_refused(options: Options) -> None:
    with pytest.raises(ConfigError):
        options.check(max_batch_rows=500)


# --- pacing -------------------------------------------------------------------------------------


def test_pace_delay_is_absolute() -> None:
    assert pace_delay(5, None, started=100.0, now=100.0) == 0.0
    assert pace_delay(5, 10.0, started=100.0, now=100.2) == pytest.approx(0.3)
    assert pace_delay(5, 10.0, started=100.0, now=101.0) == 0.0  # late: at once, no catching up by sleeping


def test_pacing_holds_the_rate_with_an_injected_clock() -> None:
    """200 requests of 2 rows at 100 rows/s, each send taking 3 ms: the schedule does not drift."""
    now, started = 0.0, 0.0
    sent_at = []
    for start, _ in spans(400, 2):
        now += pace_delay(start, 100.0, started, now)
        sent_at.append(now)
        now += 0.003
    assert sent_at[0] == 0.0
    assert sent_at[-1] == pytest.approx(398 / 100.0)  # the last request's first row is row 398
    gaps = [b - a for a, b in zip(sent_at, sent_at[1:], strict=False)]
    assert all(g == pytest.approx(0.02) for g in gaps)


def test_spans_cover_the_rows_in_order() -> None:
    assert spans(7, 3) == [(0, 3), (3, 6), (6, 7)]
    assert spans(2, 1) == [(0, 1), (1, 2)]
    assert spans(0, 5) == []


@pytest.mark.parametrize(("header", "want"), [("3", 3.0), (None, 1.0), ("soon", 1.0), ("1000", 30.0), ("-5", 0.0),
                                              ("nan", 1.0), ("0", 0.0)])
def test_retry_after(header: str | None, want: float) -> None:
    assert retry_after_s(header) == want


# --- the label schedule ----------------------------------------------------------------------------


def _label(rid: str, due: float = 0.0, label: int = 0) -> PendingLabel:
    return PendingLabel(rid, label, due)


def test_schedule_gives_labels_when_due_earliest_first() -> None:
    s = LabelSchedule()
    for rid, due in [("c", 3.0), ("a", 1.0), ("b", 2.0), ("a2", 1.0)]:
        s.add(_label(rid, due), due)
    assert len(s) == 4 and s.next_due() == 1.0
    assert s.take_due(0.5) == []
    assert [x.request_id for x in s.take_due(1.0)] == ["a", "a2"]  # equals in the order they came
    assert [x.request_id for x in s.take_due(10.0, limit=1)] == ["b"]
    assert s.next_due() == 3.0
    assert [x.request_id for x in s.take_due(10.0)] == ["c"]
    assert s.next_due() is None and len(s) == 0


def test_feedback_outcome_accepts_retries_and_refuses() -> None:
    sent = [_label(x, due=100.0) for x in ("s1", "s2", "cold", "same", "late", "conf", "exp")]
    body = {"stored": 2, "stored_cold": 1, "unchanged": 1, "unknown": ["late"], "conflicts": ["conf"],
            "expired": ["exp"]}
    soon = feedback_outcome(sent, body, now=101.0, wait_s=10.0)
    assert soon.accepted == 4 and [x.request_id for x in soon.retry] == ["late"]
    assert soon.refused == Counter({"conflict": 1, "expired": 1})
    later = feedback_outcome(sent, body, now=111.0, wait_s=10.0)  # waited long enough for the log
    assert later.retry == [] and later.refused == Counter({"conflict": 1, "expired": 1, "unknown": 1})


def test_retry_or_refuse_is_bounded() -> None:
    items = [PendingLabel("a", 1, 0.0, attempts=0), PendingLabel("b", 0, 0.0, attempts=2)]
    again, refused = retry_or_refuse(items, "503", tries=2)
    assert [(x.request_id, x.attempts) for x in again] == [("a", 1)]
    assert refused == Counter({"503": 1})
    assert retry_or_refuse(items[:1], "503", tries=2)[1] == Counter()


# --- the summary -----------------------------------------------------------------------------------


def _tally(answers: list[tuple[int, float, str]], errors: dict[str, int] | None = None) -> Tally:
    t = Tally(answers=[Answer(f"r{i}", y, p, v) for i, (y, p, v) in enumerate(answers)],
              errors=Counter(errors or {}))
    t.sent = len(answers) + sum(t.errors.values())
    return t


def test_summary_arithmetic() -> None:
    t = _tally([(1, 0.9, "xgboost_stable"), (0, 0.2, "xgboost_stable"), (0, 0.4, "pytorch"), (1, 0.3, "pytorch")],
               errors={"422": 1, "503": 1})
    t.labels_sent, t.labels_accepted, t.labels_refused = 4, 3, Counter({"conflict": 1, "expired": 0})
    s = summarize(6, t, started=10.0, send_done=12.0, finished=15.0)
    assert (s.rows, s.sent, s.answered) == (6, 6, 4)
    assert s.by_variant == {"xgboost_stable": 2, "pytorch": 2}
    assert s.errors == {"422": 1, "503": 1}
    assert s.labels_refused == {"conflict": 1}  # zero counts dropped
    assert (s.send_s, s.elapsed_s, s.rate) == (2.0, 5.0, 3.0)
    assert s.auc == pytest.approx(0.75)  # positives 0.9, 0.3 against negatives 0.2, 0.4: 3 of 4 pairs
    assert not s.clean
    d = s.as_dict()
    assert "answers" not in d and json.loads(json.dumps(d)) == d
    text = s.format()
    assert "6 of 6 rows sent, 4 answered" in text and "422 1" in text and "AUC of the answers: 0.7500" in text


def test_summary_of_one_class_has_no_auc_and_an_idle_run_no_rate() -> None:
    s = summarize(2, _tally([(0, 0.1, "pytorch"), (0, 0.2, "pytorch")]), started=1.0, send_done=1.0, finished=1.0)
    assert s.auc is None and s.rate == 0.0 and "n/a" in s.format()


# --- the file, and the run against a mock gateway ----------------------------------------------------


class FakeGateway:
    """Answers predict (the first ``shed`` calls with 503) and feedback/batch (an id unknown to
    its first label call, as when the gateway has not logged it yet); records every request."""

    def __init__(self, shed: int = 0, unknown_first: int = 0) -> None:
        self.shed, self.unknown_first = shed, unknown_first
        self.predict_bodies: list[Any] = []
        self.answered: dict[str, float] = {}
        self.rows: dict[str, dict[str, Any]] = {}
        self.labelled: dict[str, tuple[int, float]] = {}
        self.feedback_auth: set[str] = set()
        self.calls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        body = json.loads(request.content)
        if request.url.path == "/api/v1/predict":
            if self.shed > 0:
                self.shed -= 1
                return httpx.Response(503, json={"error": "gateway saturated"}, headers={"Retry-After": "0"})
            self.predict_bodies.append(body)
            rows = body if isinstance(body, list) else [body]
            out = []
            for row in rows:
                rid = f"{len(self.answered):032x}"
                self.answered[rid] = time.monotonic()
                self.rows[rid] = row
                out.append({"request_id": rid, "probability": row["merchant_risk_score"], "variant":
                            "pytorch" if len(self.answered) % 4 == 0 else "xgboost_stable"})
            return httpx.Response(200, json=out if isinstance(body, list) else out[0])
        assert request.url.path == "/api/v1/feedback/batch"
        self.feedback_auth.add(request.headers["authorization"])
        answer: dict[str, Any] = {"stored": 0, "stored_cold": 0, "unchanged": 0, "unknown": [], "conflicts": [],
                                  "expired": []}
        for item in body:
            if self.unknown_first > 0:
                self.unknown_first -= 1
                answer["unknown"].append(item["request_id"])
                continue
            self.labelled[item["request_id"]] = (item["label"], time.monotonic())
            answer["stored"] += 1
        return httpx.Response(200, json=answer)


def _data_file(tmp_path: Path, n: int = 60, seed: int = 5) -> tuple[Path, Any]:
    frame = generate(n, seed=seed)
    path = tmp_path / "later.csv"
    frame.to_csv(path, index=False)
    return path, frame


def test_a_file_with_a_wrong_column_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    path, frame = _data_file(tmp_path)
    first = schema.active().feature_names[0]
    frame.rename(columns={first: "renamed_feature"}).to_csv(path, index=False)
    gw = FakeGateway()
    with pytest.raises(InvalidData) as err:
        replay.run(path, gateway="http://127.0.0.1:9", transport=httpx.MockTransport(gw))
    assert f"column {first!r}: missing column" in str(err.value) and "renamed_feature" in str(err.value)
    assert gw.calls == 0


def test_a_bad_value_or_a_missing_label_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    s = schema.active()
    path, frame = _data_file(tmp_path)
    gw = FakeGateway()
    frame.drop(columns=[s.label]).to_csv(path, index=False)
    with pytest.raises(InvalidData, match=f"column {s.label!r}: missing column"):
        replay.run(path, gateway="http://127.0.0.1:9", transport=httpx.MockTransport(gw))
    numeric = s.numeric[0].name
    frame.astype({numeric: object}).assign(**{numeric: ["x"] + list(frame[numeric][1:])}).to_csv(path, index=False)
    with pytest.raises(InvalidData, match=f"column {numeric!r}, row 0"):
        replay.run(path, gateway="http://127.0.0.1:9", transport=httpx.MockTransport(gw))
    assert gw.calls == 0


def test_replay_posts_rows_without_the_label_and_labels_after_the_delay(tmp_path: Path) -> None:
    s = schema.active()
    path, frame = _data_file(tmp_path, n=60)
    gw = FakeGateway(shed=2, unknown_first=3)
    t0 = time.monotonic()
    summary = replay.run(path, gateway="http://127.0.0.1:9/", rows=(10, 50), limit=30,
                         options=Options(labels_after=0.3, batch=4, concurrency=3),
                         transport=httpx.MockTransport(gw))
    elapsed = time.monotonic() - t0
    rows = [r for body in gw.predict_bodies for r in body]
    assert len(rows) == 30 and all(isinstance(b, list) for b in gw.predict_bodies)
    assert all(s.label not in r and set(r) == {*s.feature_names, s.entity_key} for r in rows)
    assert sorted(r[s.entity_key] for r in rows) == sorted(frame[s.entity_key][10:40])  # rows 10-39
    assert summary.sent == summary.answered == summary.rows == 30 and summary.retried == 2 and not summary.errors
    assert summary.labels_sent == summary.labels_accepted == 30 and summary.clean
    by_id = {a.request_id: a for a in summary.answers}
    assert set(by_id) == set(gw.labelled) == set(gw.answered)
    truth = {_key(b): int(y) for b, y in zip(replay.load_rows(path).bodies, frame[s.label], strict=True)}
    for rid, (label, at) in gw.labelled.items():
        assert label == by_id[rid].label == truth[_key(gw.rows[rid])]  # each row's own label
        assert at - gw.answered[rid] >= 0.3  # sent after the delay, not before
    assert summary.by_variant == dict(Counter(a.variant for a in summary.answers))
    assert gw.feedback_auth == {f"Bearer {labeller_token()}"}
    assert elapsed < 5


def _key(body: dict[str, Any]) -> str:
    return json.dumps(body, sort_keys=True)


def test_replay_sends_in_file_order(tmp_path: Path) -> None:
    s = schema.active()
    path, frame = _data_file(tmp_path, n=25)
    gw = FakeGateway()
    replay.run(path, gateway="http://127.0.0.1:9", rows=(5, None), options=Options(concurrency=1),
               transport=httpx.MockTransport(gw))
    assert [b[s.entity_key] for b in gw.predict_bodies] == list(frame[s.entity_key][5:])


def labeller_token() -> str:
    from healmesh import credentials
    from healmesh.settings import get_settings

    return credentials.labeller_token(get_settings())


def test_replay_paces_single_rows(tmp_path: Path) -> None:
    path, _ = _data_file(tmp_path, n=20)
    gw = FakeGateway()
    summary = replay.run(path, gateway="http://localhost:9", options=Options(rate=100.0),
                         transport=httpx.MockTransport(gw))
    assert all(isinstance(b, dict) for b in gw.predict_bodies) and summary.answered == 20
    assert summary.send_s >= 19 / 100.0 and summary.rate <= 110.0


def test_503_past_the_retries_counts_as_errors(tmp_path: Path) -> None:
    path, _ = _data_file(tmp_path, n=5)
    gw = FakeGateway(shed=10_000)
    summary = replay.run(path, gateway="http://127.0.0.1:9", options=Options(concurrency=1),
                         transport=httpx.MockTransport(gw))
    assert summary.errors == {"503": 5} and summary.answered == 0 and summary.labels_sent == 0
    assert summary.retried == 5 * replay.SHED_RETRIES


def test_the_cli_registers_replay_and_refuses_a_remote_gateway(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    args = cli.build_parser().parse_args(["replay", "--data", "x.csv", "--rows", "1:9", "--rate", "5",
                                          "--labels-after", "2", "--batch", "3", "--limit", "4", "--json"])
    assert args.func is cli.cmd_replay
    assert (args.rows, args.rate, args.labels_after, args.batch, args.limit, args.json) == ("1:9", 5.0, 2.0, 3, 4,
                                                                                            True)
    assert cli.main(["replay", "--data", str(tmp_path / "x.csv"), "--gateway", "http://example.com"]) == 2
    assert "this machine" in capsys.readouterr().err


def test_a_refused_labeller_token_is_counted_and_named(tmp_path: Path) -> None:
    path, _ = _data_file(tmp_path, n=6)
    gw = FakeGateway()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/feedback/batch"):
            return httpx.Response(401, json={"detail": "no labeller token"})
        return gw(request)

    summary = replay.run(path, gateway="http://127.0.0.1:9", options=Options(batch=3),
                         transport=httpx.MockTransport(handler))
    assert summary.answered == 6 and summary.labels_sent == 6 and summary.labels_accepted == 0
    assert summary.labels_refused == {"401": 6} and not summary.clean
    assert "labeller token was refused" in summary.format()
