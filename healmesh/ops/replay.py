"""`healmesh replay`: a user's own later data through the gateway, its labels after a delay.

The rows of a CSV or Parquet file are checked against the active project's schema first (a
file that does not fit sends nothing), then posted to ``/api/v1/predict`` in file order without
the label column, at ``rate`` rows/s or as fast as the gateway answers (at most ``concurrency``
requests in flight). Each answered row's label goes to ``/api/v1/feedback/batch``
``labels_after`` seconds after its answer, from a delayed queue. Loopback gateways only; the
run is bounded by the file (and ``limit``) and ends by itself.

The pure parts (pacing, the label schedule, the summary) take the time as an argument.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import ipaddress
import itertools
import json
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO
from urllib.parse import urlparse

import pandas as pd

from healmesh import schema
from healmesh.errors import ConfigError, InvalidData

if TYPE_CHECKING:
    import httpx

SHED_RETRIES = 5  # a 503 (gateway or feature store full) is asked again this often, then counted
MAX_RETRY_AFTER_S = 30.0  # a longer Retry-After is cut to this: the run stays bounded
UNKNOWN_WAIT_S = 10.0  # a label for a request not logged yet (logging is off the hot path) is retried this long
UNKNOWN_RETRY_S = 0.2
LABEL_BATCH = 1_000  # the most /feedback/batch takes
REQUEST_TIMEOUT_S = 30.0
PREDICT = "/api/v1/predict"
FEEDBACK = "/api/v1/feedback/batch"


# --- arguments -----------------------------------------------------------------------------------

def parse_rows(text: str) -> tuple[int, int | None]:
    """``START:STOP`` (either may be left out) as ``[start, stop)``, rows counted from 0."""
    start_s, sep, stop_s = text.partition(":")
    try:
        start = int(start_s) if start_s.strip() else 0
        stop = int(stop_s) if stop_s.strip() else None
    except ValueError:
        raise ConfigError(f"--rows takes START:STOP (whole numbers), got {text!r}") from None
    if not sep or start < 0 or (stop is not None and stop <= start):
        raise ConfigError(f"--rows takes START:STOP with 0 <= START < STOP, got {text!r}")
    return start, stop


def loopback_url(url: str) -> str:
    """``url`` without a trailing slash, if its host is this machine (127.0.0.0/8, ::1,
    localhost); anything else raises ``ConfigError``: replay is for a local mesh only."""
    parsed = urlparse(url)
    host = parsed.hostname
    if parsed.scheme not in ("http", "https") or not host:
        raise ConfigError(f"--gateway must be an http(s) URL of this machine, got {url!r}")
    if host != "localhost":
        try:
            local = ipaddress.ip_address(host).is_loopback
        except ValueError:  # a name other than localhost: it could resolve anywhere
            local = False
        if not local:
            raise ConfigError(f"replay only sends to a gateway on this machine (127.0.0.0/8, ::1, localhost), "
                              f"not {host!r}")
    return url.rstrip("/")


# --- pure parts ------------------------------------------------------------------------------------

def pace_delay(rows_before: int, rate: float | None, started: float, now: float) -> float:
    """Seconds to wait before sending the request whose first row has ``rows_before`` rows
    ahead of it. The schedule is absolute (``started + rows_before / rate``), so delays do not
    accumulate: a late request is sent at once. ``rate`` None: no pacing."""
    if rate is None:
        return 0.0
    return max(0.0, started + rows_before / rate - now)


def spans(n: int, batch: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of each request of at most ``batch`` rows, in file order."""
    return [(i, min(i + batch, n)) for i in range(0, n, batch)]


def retry_after_s(header: str | None, default: float = 1.0, cap: float = MAX_RETRY_AFTER_S) -> float:
    """A Retry-After header in seconds (the gateway sends whole seconds; an HTTP date or
    garbage counts as ``default``), between 0 and ``cap``."""
    try:
        value = float(header) if header is not None else default
    except ValueError:
        value = default
    return min(max(value, 0.0), cap) if value == value else default  # NaN: the default


@dataclass(frozen=True)
class PendingLabel:
    request_id: str
    label: int
    first_due: float  # when it was first due: bounds how long an unknown id is retried
    attempts: int = 0  # sends that met a 503 or no answer
    resent: bool = False  # sent before (counted once in labels_sent)


class LabelSchedule:
    """Labels waiting for their time: a heap by due time (file order among equals)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, PendingLabel]] = []
        self._seq = itertools.count()

    def add(self, item: PendingLabel, due: float) -> None:
        heapq.heappush(self._heap, (due, next(self._seq), item))

    def take_due(self, now: float, limit: int = LABEL_BATCH) -> list[PendingLabel]:
        """Up to ``limit`` labels due at ``now``, earliest first, removed from the schedule."""
        out: list[PendingLabel] = []
        while self._heap and self._heap[0][0] <= now and len(out) < limit:
            out.append(heapq.heappop(self._heap)[2])
        return out

    def next_due(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def __len__(self) -> int:
        return len(self._heap)


@dataclass(frozen=True)
class LabelOutcome:
    """What one /feedback/batch answer means for the labels it carried."""

    accepted: int
    retry: list[PendingLabel]
    refused: Counter[str]


def feedback_outcome(sent: Sequence[PendingLabel], body: dict[str, Any], now: float,
                     wait_s: float = UNKNOWN_WAIT_S) -> LabelOutcome:
    """Stored, cold-stored and unchanged labels are accepted; an unknown id (its request not
    logged yet) is retried until ``wait_s`` after it was first due; conflicts and expired
    ones are refused."""
    unknown = set(body.get("unknown", ()))
    refused: Counter[str] = Counter({"conflict": len(body.get("conflicts", ())),
                                     "expired": len(body.get("expired", ()))})
    retry: list[PendingLabel] = []
    for item in sent:
        if item.request_id in unknown:
            if now - item.first_due < wait_s:
                retry.append(item)
            else:
                refused["unknown"] += 1
    accepted = int(body.get("stored", 0)) + int(body.get("stored_cold", 0)) + int(body.get("unchanged", 0))
    return LabelOutcome(accepted, retry, +refused)


def retry_or_refuse(items: Sequence[PendingLabel], why: str,
                    tries: int = SHED_RETRIES) -> tuple[list[PendingLabel], Counter[str]]:
    """After a 503 or no answer: the labels to send again (one more attempt each), and those
    out of attempts, refused under ``why``."""
    again = [replace(x, attempts=x.attempts + 1) for x in items if x.attempts < tries]
    return again, +Counter({why: len(items) - len(again)})


@dataclass(frozen=True)
class Answer:
    request_id: str
    label: int  # the true label from the file
    probability: float
    variant: str
    model_version: str = ""
    model: str = ""


@dataclass
class Tally:
    """What the run counts as it goes (mutable; ``summarize`` turns it into a ``Summary``)."""

    sent: int = 0
    answers: list[Answer] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    retried: int = 0
    labels_sent: int = 0
    labels_accepted: int = 0
    labels_refused: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class Summary:
    rows: int  # rows selected from the file
    sent: int  # rows posted
    answered: int
    by_variant: dict[str, int]
    errors: dict[str, int]  # unanswered rows by HTTP status (or the transport error's name)
    retried: int  # 503 answers asked again
    labels_sent: int
    labels_accepted: int
    labels_refused: dict[str, int]  # by reason: unknown, conflict, expired, or an HTTP status
    elapsed_s: float  # the whole run, labels included
    send_s: float  # first request to last answer
    rate: float  # rows sent per second of send_s
    auc: float | None  # of the answered probabilities against the labels (both classes present)
    answers: tuple[Answer, ...] = field(default=(), repr=False, compare=False)

    @property
    def clean(self) -> bool:
        """Every row answered and every label accepted."""
        return self.answered == self.rows and self.labels_accepted == self.answered

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        del out["answers"]  # request ids: for tests and callers, not the printed summary
        return out

    def format(self) -> str:
        def counts(c: dict[str, int]) -> str:
            return ", ".join(f"{k} {v}" for k, v in sorted(c.items(), key=lambda kv: -kv[1])) or "none"

        lines = [
            f"replay: {self.sent} of {self.rows} rows sent, {self.answered} answered in {self.send_s:.1f} s "
            f"({self.rate:.0f} rows/s; {self.retried} retried after 503)",
            f"  answered by: {counts(self.by_variant)}",
            f"  errors: {counts(self.errors)}",
            f"  labels: {self.labels_sent} sent, {self.labels_accepted} accepted, "
            f"{sum(self.labels_refused.values())} refused ({counts(self.labels_refused)})",
            f"  AUC of the answers: {self.auc:.4f}" if self.auc is not None
            else "  AUC of the answers: n/a (needs answers of both classes)",
            f"  elapsed: {self.elapsed_s:.1f} s",
        ]
        if "401" in self.labels_refused or "403" in self.labels_refused:
            lines.append("  the labeller token was refused: HEALMESH_LABELLER_TOKEN, or "
                         "$HEALMESH_HOME/secrets/labeller_token, must be the gateway's")
        return "\n".join(lines)


def auc(labels: Sequence[int], probabilities: Sequence[float]) -> float | None:
    """ROC AUC; None unless both classes are present."""
    if len(set(labels)) < 2:
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(list(labels), list(probabilities)))


def summarize(rows: int, tally: Tally, started: float, send_done: float, finished: float) -> Summary:
    """The run's summary from its tally and three instants of one clock."""
    send_s = max(0.0, send_done - started)
    answers = tuple(tally.answers)
    return Summary(
        rows=rows, sent=tally.sent, answered=len(answers),
        by_variant=dict(Counter(a.variant for a in answers)), errors=dict(tally.errors), retried=tally.retried,
        labels_sent=tally.labels_sent, labels_accepted=tally.labels_accepted,
        labels_refused=dict(+tally.labels_refused), elapsed_s=max(0.0, finished - started), send_s=send_s,
        rate=tally.sent / send_s if send_s > 0 else 0.0,
        auc=auc([a.label for a in answers], [a.probability for a in answers]), answers=answers)


# --- the data ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReplayRows:
    bodies: list[dict[str, Any]]  # one request row each: the features and the entity key, no label
    labels: list[int]  # 0/1, 1: the project's positive class
    ignored: tuple[str, ...]  # columns of the file the project does not declare (not sent)


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def request_bodies(frame: pd.DataFrame, s: schema.Schema) -> list[dict[str, Any]]:
    """The rows of a validated frame as request bodies: the features, and the entity key when
    the schema has one and the row carries it (sticky routing); never the label."""
    key = s.entity_key if s.entity_key and s.entity_key in frame.columns else None
    cols = list(s.feature_names) + ([key] if key else [])
    out: list[dict[str, Any]] = []
    for rec in frame[cols].to_dict("records"):
        body = {name: _plain(rec[name]) for name in s.feature_names}
        if key is not None and not pd.isna(rec[key]):
            body[key] = str(_plain(rec[key]))  # a Parquet file may hold it as a number
        out.append(body)
    return out


def load_rows(path: str | Path, rows: tuple[int, int | None] | None = None, limit: int | None = None,
              s: schema.Schema | None = None) -> ReplayRows:
    """The file's selected rows, validated with the project's schema (the label required).
    Raises ``InvalidData`` naming the column at fault, and any column the project lacks."""
    from healmesh.data.files import read_table, select_rows

    s = s or schema.active()
    raw = select_rows(read_table(path), rows)
    if limit is not None:
        raw = raw.iloc[:limit].reset_index(drop=True)
    known = {*s.feature_names, s.label, *([s.entity_key] if s.entity_key else [])}
    ignored = tuple(c for c in s.rename_columns(raw).columns if c not in known)
    try:
        frame = s.validate_raw(raw, require_label=True)
    except schema.SchemaError as exc:
        hint = f"; the file's columns the project does not declare: {', '.join(ignored)}" if ignored else ""
        raise InvalidData(f"{path} does not fit the project's schema: {exc}{hint}") from exc
    return ReplayRows(request_bodies(frame, s), [int(y) for y in frame[s.label]], ignored)


# --- the run ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Options:
    rate: float | None = None  # rows/s; None: as fast as the gateway answers
    labels_after: float = 0.0
    batch: int = 1
    concurrency: int = 8
    progress: bool = False
    # set by another thread to end the sending early (a background replay during a rollout);
    # the labels of what was answered are still sent
    stop: threading.Event | None = field(default=None, compare=False)

    def check(self, max_batch_rows: int) -> None:
        if self.rate is not None and not self.rate > 0:
            raise ConfigError(f"--rate must be above 0 rows/s, got {self.rate}")
        if not self.labels_after >= 0:
            raise ConfigError(f"--labels-after must be 0 s or more, got {self.labels_after}")
        if not 1 <= self.batch <= max_batch_rows:
            raise ConfigError(f"--batch must be 1 to {max_batch_rows} (the gateway's limit), got {self.batch}")
        if self.concurrency < 1:
            raise ConfigError(f"--concurrency must be 1 or more, got {self.concurrency}")


async def _post_predict(client: httpx.AsyncClient, body: Any, tally: Tally) -> tuple[str, Any]:
    """``("200", answer)`` or ``(status or error name, None)``; a 503 is asked again after
    its Retry-After, at most ``SHED_RETRIES`` times."""
    for attempt in range(SHED_RETRIES + 1):
        r = await client.post(PREDICT, json=body)
        if r.status_code == 503 and attempt < SHED_RETRIES:
            tally.retried += 1
            await asyncio.sleep(retry_after_s(r.headers.get("retry-after")))
            continue
        return str(r.status_code), (r.json() if r.status_code == 200 else None)
    raise AssertionError("unreachable")


async def replay(data: ReplayRows, gateway: str, options: Options = Options(), *,
                 transport: httpx.AsyncBaseTransport | None = None,
                 clock: Callable[[], float] = time.monotonic) -> Summary:
    """Post ``data`` to the gateway and its labels after ``options.labels_after``; the summary."""
    import httpx
    from tqdm import tqdm

    from healmesh.lifecycle.traffic import labeller_headers

    base = loopback_url(gateway)
    tally, schedule, wake = Tally(), LabelSchedule(), asyncio.Event()
    n = len(data.bodies)
    headers = labeller_headers()
    limits = httpx.Limits(max_connections=options.concurrency + 1)  # + the label sender
    started = clock()
    sent_at: float | None = None
    # trust_env off: a proxy from the environment must not carry loopback traffic elsewhere
    async with httpx.AsyncClient(base_url=base, timeout=REQUEST_TIMEOUT_S, limits=limits, transport=transport,
                                 trust_env=False) as client:
        bars = [tqdm(total=n, desc=what, unit="row", file=sys.stderr, position=i, disable=not options.progress)
                for i, what in enumerate(("predict", "labels"))]
        slots = asyncio.Semaphore(options.concurrency)

        async def post(start: int, stop: int) -> None:
            chunk = data.bodies[start:stop]
            try:
                status, answer = await _post_predict(client, chunk if options.batch > 1 else chunk[0], tally)
            except httpx.ConnectError:
                if not tally.answers:  # no gateway there at all: say so rather than count every row
                    raise
                status, answer = "ConnectError", None
            except httpx.HTTPError as exc:
                status, answer = type(exc).__name__, None
            finally:
                slots.release()
            due = clock() + options.labels_after
            bars[0].update(stop - start)
            if answer is None:
                tally.errors[status] += stop - start
                bars[1].update(stop - start)  # no label goes for these
                return
            for i, a in enumerate(answer if isinstance(answer, list) else [answer], start=start):
                tally.answers.append(Answer(a["request_id"], data.labels[i], float(a["probability"]), a["variant"],
                                            str(a.get("model_version", "")), str(a.get("model", ""))))
                schedule.add(PendingLabel(a["request_id"], data.labels[i], due), due)
            wake.set()

        async def send_all() -> None:
            nonlocal sent_at
            async with asyncio.TaskGroup() as posts:
                for start, stop in spans(n, options.batch):
                    if options.stop is not None and options.stop.is_set():
                        break
                    await asyncio.sleep(pace_delay(start, options.rate, started, clock()))
                    await slots.acquire()
                    tally.sent += stop - start
                    posts.create_task(post(start, stop))
            sent_at = clock()
            wake.set()

        async def label_all() -> None:
            while True:
                due = schedule.take_due(clock())
                if due:
                    await _send_labels(client, headers, due, schedule, tally, clock, bars[1])
                    continue
                if sent_at is not None and not schedule:
                    return
                nxt = schedule.next_due()
                wake.clear()  # no await since the checks above: nothing can be missed
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), None if nxt is None else max(0.0, nxt - clock()))

        try:
            async with asyncio.TaskGroup() as run_group:
                run_group.create_task(send_all())
                run_group.create_task(label_all())
        except BaseExceptionGroup as group:  # the first cause, as the caller would see it unwrapped
            raise _first(group) from None
        finally:
            for bar in bars:
                bar.close()
    return summarize(n, tally, started, sent_at if sent_at is not None else clock(), clock())


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


async def _send_labels(client: httpx.AsyncClient, headers: dict[str, str], batch: list[PendingLabel],
                       schedule: LabelSchedule, tally: Tally, clock: Callable[[], float], bar: Any) -> None:
    """One /feedback/batch call; what must be asked again goes back on the schedule."""
    import httpx

    tally.labels_sent += sum(1 for x in batch if not x.resent)
    again: list[PendingLabel] = []
    delay = UNKNOWN_RETRY_S
    try:
        r = await client.post(FEEDBACK, json=[{"request_id": x.request_id, "label": x.label} for x in batch],
                              headers=headers)
        status, retry_after = str(r.status_code), r.headers.get("retry-after")
    except httpx.HTTPError as exc:
        status, retry_after = type(exc).__name__, None
    if status == "200":
        outcome = feedback_outcome(batch, r.json(), clock())
        tally.labels_accepted += outcome.accepted
        tally.labels_refused.update(outcome.refused)
        again = outcome.retry
    elif status == "503" or not status.isdigit():  # Redis away, or no answer: bounded retries
        delay = retry_after_s(retry_after)
        again, refused = retry_or_refuse(batch, status)
        tally.labels_refused.update(refused)
    else:  # 401, 403, 422...: asking again cannot help
        tally.labels_refused[status] += len(batch)
    bar.update(len(batch) - len(again))
    for item in again:
        schedule.add(replace(item, resent=True), clock() + delay)


def run(path: str | Path, *, gateway: str | None = None, rows: tuple[int, int | None] | None = None,
        limit: int | None = None, options: Options = Options(), transport: httpx.AsyncBaseTransport | None = None,
        notes: TextIO | None = None) -> Summary:
    """Check the gateway URL and the file (nothing is sent unless both are fine), then replay."""
    from healmesh.settings import get_settings

    settings = get_settings()
    base = loopback_url(gateway or settings.gateway_api_url)
    options.check(settings.max_batch_rows)
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be 1 or more, got {limit}")
    data = load_rows(path, rows, limit)
    if data.ignored and notes is not None:
        print(f"replay: not sent, not in the project: {', '.join(data.ignored)}", file=notes)
    return asyncio.run(replay(data, base, options, transport=transport))


def command(args: argparse.Namespace) -> int:
    """`healmesh replay`: 0 when every row was answered and every label accepted, else 1."""
    options = Options(rate=args.rate, labels_after=args.labels_after, batch=args.batch,
                      concurrency=args.concurrency, progress=not args.no_progress)
    summary = run(args.data, gateway=args.gateway, rows=parse_rows(args.rows) if args.rows else None,
                  limit=args.limit, options=options, notes=sys.stderr)
    print(json.dumps(summary.as_dict()) if args.json else summary.format())
    return 0 if summary.clean else 1
