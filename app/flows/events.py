"""Delivery events: every step of every OTP and notification as one record on the events topic.

An operator answering "my customer never got the code" reads them (or a pipeline of theirs
does): what was sent, to whom, through which provider, and what became of it. Each record is
keyed by its receiver, so one person's events stay in order on one partition.

``eventId`` is derived from the step itself (the request's source record, the event type and
the receiver), so the same step yields the same id however often it is retried; and the flows
emit nothing for a step their rows show as done, so a redelivered request adds no event. Only
the crash window the README names (a step done in the moment before its row reached the
changelog) can repeat an event, with the same ``eventId``, for consumers to drop.

Never in an event: the code, a rendered body, a credential.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from app import codec
from app.flows import Clock, Outbox, Route
from app.metrics import Metrics
from app.records import iso_utc

log = logging.getLogger(__name__)

OTP_SENT = "otp.sent"
OTP_SEND_REFUSED = "otp.send_refused"
OTP_VALIDATED = "otp.validated"
OTP_ATTEMPT_FAILED = "otp.attempt_failed"
OTP_LOCKED = "otp.locked"
OTP_EXPIRED = "otp.expired"
NOTIFICATION_SENT = "notification.sent"
NOTIFICATION_FAILED = "notification.failed"
NOTIFICATION_FORWARDED = "notification.forwarded"
DELIVERY_STATUS = "delivery.status"
TYPES = (
    OTP_SENT,
    OTP_SEND_REFUSED,
    OTP_VALIDATED,
    OTP_ATTEMPT_FAILED,
    OTP_LOCKED,
    OTP_EXPIRED,
    NOTIFICATION_SENT,
    NOTIFICATION_FAILED,
    NOTIFICATION_FORWARDED,
    DELIVERY_STATUS,
)
# What an event says of the request it belongs to (also what a provider's later status
# reports need to be told of the message, ``app.flows.receipts``).
CONTEXT_FIELDS = (
    "entryId",
    "processInstanceId",
    "clientId",
    "identifier",
    "templateName",
    "language",
    "channel",
)
FIELDS = (
    *CONTEXT_FIELDS,
    "receiver",
    "provider",
    "providerMessageId",
    "status",
    "error",
)


def entry_id(*parts: object) -> str:
    """The send-log entry an event belongs to: one send (an OTP code, one receiver of a
    notification), which a validate, an expiry or a provider's receipt joins later."""
    return hashlib.sha256("\x00".join(map(str, parts)).encode()).hexdigest()[:24]


def event_id(source: str, event_type: str, receiver: str) -> str:
    """The same id for the same step: a retry or a redelivery cannot mint a new one."""
    digest = hashlib.sha256(f"{source}\x00{event_type}\x00{receiver}".encode()).hexdigest()
    return digest[:32]


class Events:
    """Writes delivery events; never raises, since a lost event must not lose a reply."""

    def __init__(self, outbox: Outbox, metrics: Metrics, clock: Clock) -> None:
        self.outbox = outbox
        self.metrics = metrics
        self.clock = clock

    def record(self, event_type: str, source: str, receiver: str, **fields: Any) -> dict[str, Any]:
        unknown = fields.keys() - set(FIELDS)
        if unknown or event_type not in TYPES:
            raise ValueError(f"not an event: {event_type} {sorted(unknown)}")
        return {
            "eventId": event_id(source, event_type, receiver),
            "type": event_type,
            "at": iso_utc(self.clock()),
            **{name: fields.get(name) for name in FIELDS},
            "receiver": receiver or None,
        }

    async def emit(self, event_type: str, source: str, receiver: str, **fields: Any) -> None:
        event = self.record(event_type, source, receiver, **fields)
        try:
            await self.outbox.send(Route.EVENTS, receiver.encode(), codec.dumps(event), [])
        except Exception as exc:  # the broker refused it: the step itself is done and answered
            self.metrics.events.labels(event_type, "lost").inc()
            log.warning("could not write a %s event (%s)", event_type, type(exc).__name__)
            return
        self.metrics.events.labels(event_type, "written").inc()
