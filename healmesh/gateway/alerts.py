"""Alertmanager's webhook, ``POST /api/v1/alerts``: its body (version 4), validated, and the
lifecycle event each alert becomes (``alert_firing`` / ``alert_resolved``, on the status page).

Pure: no I/O. The route (healmesh.gateway.api) records the events with
``healmesh.control.events.record_once`` under ``marker_key``, so each alert is recorded once
per (fingerprint, status, startsAt):

- Alertmanager repeats a firing alert every ``repeat_interval``, re-sends a whole group whenever
  one of its alerts changes, and retries a notification the gateway answered 5xx: the same
  triple, recorded once.
- The alert resolving is a new status: one ``alert_resolved`` event.
- The same alert firing again later has a new ``startsAt``: a new ``alert_firing`` event.

The marker lives ``MARKER_TTL_S`` (a week): an alert still firing a week later is recorded once
more, as a reminder, and Redis keeps no marker for ever.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)

MARKER_TTL_S = 7 * 24 * 3600
MAX_ALERTS = 1_000  # per notification (the Alertmanager healmesh configures sends at most 64)
MESSAGE_CHARS = 500
ALERTNAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]{0,199}$")  # a Prometheus alert (rule) name

Status = Literal["firing", "resolved"]
Text = Annotated[str, StringConstraints(max_length=4_096)]


def _rfc3339_text(value: Any) -> Any:
    if not isinstance(value, str):  # pydantic would take a number as Unix time
        raise ValueError("an RFC 3339 timestamp string is required")
    return value


Timestamp = Annotated[AwareDatetime, BeforeValidator(_rfc3339_text)]


class WebhookAlert(BaseModel):
    """One alert of a notification. Fields healmesh does not use (generatorURL) are ignored."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    status: Status
    labels: dict[Annotated[str, StringConstraints(min_length=1, max_length=200)], Text] = Field(max_length=64)
    annotations: dict[Annotated[str, StringConstraints(min_length=1, max_length=200)], Text] = Field(
        default_factory=dict, max_length=64)
    starts_at: Timestamp = Field(alias="startsAt")
    # Alertmanager sends 0001-01-01T00:00:00Z for an alert with no end yet
    ends_at: Timestamp | None = Field(default=None, alias="endsAt")
    fingerprint: str = Field(pattern=r"^[0-9a-fA-F]{1,64}$")

    @field_validator("labels")
    @classmethod
    def _named(cls, labels: dict[str, str]) -> dict[str, str]:
        name = labels.get("alertname")
        if name is None:
            raise ValueError("the labels have no alertname")
        if not ALERTNAME.match(name):
            raise ValueError(f"alertname {name[:50]!r} is not a Prometheus alert name")
        return labels


class AlertmanagerWebhook(BaseModel):
    """A notification as Alertmanager's webhook receiver posts it (version 4)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    version: Literal["4"]
    status: Status
    receiver: str = Field(default="", max_length=200)
    group_key: str = Field(default="", max_length=4_096, alias="groupKey")
    truncated_alerts: int = Field(default=0, ge=0, alias="truncatedAlerts")
    alerts: list[WebhookAlert] = Field(min_length=1, max_length=MAX_ALERTS)


@dataclass(frozen=True)
class AlertEvent:
    """What one alert records: an event ``kind`` and ``message`` with ``data``, once per ``marker``."""

    kind: str
    message: str
    marker: str  # the dedup identity: fingerprint, status, startsAt
    data: dict[str, Any]


def parse(body: Any) -> AlertmanagerWebhook:
    """The notification in ``body`` (parsed JSON); raises pydantic's ``ValidationError``, whose
    locations name the bad field (``alerts.0.startsAt``)."""
    return AlertmanagerWebhook.model_validate(body)


def marker(alert: WebhookAlert) -> str:
    identity = f"{alert.fingerprint.lower()}|{alert.status}|{alert.starts_at.isoformat()}"
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


def marker_key(prefix: str, event: AlertEvent) -> str:
    return f"{prefix}:alerts:seen:{event.marker}"


def message(alert: WebhookAlert) -> str:
    """``HealmeshBreakerOpen (critical): <summary>``: the alert's name, severity and summary
    (else its description), cut to ``MESSAGE_CHARS``."""
    name = alert.labels["alertname"]
    severity = alert.labels.get("severity")
    head = f"{name} ({severity})" if severity else name
    text = alert.annotations.get("summary") or alert.annotations.get("description") or ""
    out = f"{head}: {text}" if text else head
    return out if len(out) <= MESSAGE_CHARS else out[:MESSAGE_CHARS - 1] + "…"


def events(hook: AlertmanagerWebhook) -> list[AlertEvent]:
    """One event per alert, in the order Alertmanager sent them."""
    out = []
    for alert in hook.alerts:
        ends = alert.ends_at if alert.ends_at is not None and alert.ends_at.year > 1 else None
        out.append(AlertEvent(
            kind=f"alert_{alert.status}", message=message(alert), marker=marker(alert),
            data={"alertname": alert.labels["alertname"], "status": alert.status,
                  "severity": alert.labels.get("severity"), "fingerprint": alert.fingerprint,
                  "starts_at": alert.starts_at.isoformat(), "ends_at": ends.isoformat() if ends else None,
                  "labels": alert.labels, "annotations": alert.annotations, "receiver": hook.receiver}))
    return out
