"""Delivery receipts: what a provider reports after it took a message (Twilio's status callbacks).

A provider names a message by its own id (Twilio's ``MessageSid``), while the flows keep their
rows by ``clientId`` or by request. So each message a provider will report on is registered on
``<APP_ID>-message-commands`` keyed by that id, next to its row of the ``messages`` table
(receiver, processInstanceId, clientId or identifier, template, channel). A callback becomes an
update command on the same topic and key, so it is applied after the registration and in
order with the message's other updates; :class:`ReceiptProcessor` turns it into a
``delivery.status`` event and answers the waiting HTTP view on the results topic (``404`` for an
id it never registered). Rows are deleted ``RECEIPT_WINDOW_SECONDS`` after the send.

The signature check (:func:`twilio_signature`) is Twilio's documented one, pure and tested with
Twilio's own example.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from app import codec
from app.flows import (
    INTERNAL_ERROR,
    BoundedRows,
    Clock,
    DeadLetters,
    Inbound,
    Outbox,
    Route,
    Rows,
    Scan,
    expired_keys,
)
from app.flows import events as ev
from app.flows.events import Events

log = logging.getLogger(__name__)

REGISTER, UPDATE, EXPIRE = "m", "u", "x"
EXPIRE_COMMAND = codec.dumps({"k": EXPIRE})
# Twilio's MessageStatus values a status callback carries.
TWILIO_STATUSES = frozenset(
    {
        "accepted",
        "scheduled",
        "queued",
        "sending",
        "sent",
        "delivered",
        "undelivered",
        "failed",
        "read",
        "canceled",
        "receiving",
        "received",
    }
)


def twilio_signature(auth_token: str, url: str, params: Iterable[tuple[str, str]]) -> str:
    """``X-Twilio-Signature`` of a form POST: HMAC-SHA1, keyed by the auth token, of the full URL
    followed by every parameter's name and value, sorted by name (values of a repeated name in
    order), base64-encoded."""
    data = url + "".join(name + value for name, value in sorted(params))
    # HTTP text arrives surrogate-escaped (aiohttp); such bytes only make a wrong signature.
    digest = hmac.new(auth_token.encode(), _raw(data), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def signature_ok(
    auth_token: str, url: str, params: Iterable[tuple[str, str]], given: str | None
) -> bool:
    if not given:
        return False
    expected = twilio_signature(auth_token, url, params)
    return hmac.compare_digest(expected.encode(), _raw(given.strip()))


def _raw(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # never raises: any str has bytes so


@dataclass
class Message:
    """A row of ``messages``: whom a provider's message went to, and what it reported since."""

    provider: str
    receiver: str
    sent_at: float
    context: dict[str, Any] = field(default_factory=dict)
    statuses: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Message:
        return cls(**data)


class Malformed(ValueError):
    """A message command that is not one of ours; the reason names what is wrong."""


#: Longest text a registration's fields may hold: a context value is an identifier (at most
#: 200 characters where requests are read), a receiver an address, a number or a push token.
MAX_CONTEXT_CHARS = 200
MAX_RECEIVER_CHARS = 4096
MAX_PROVIDER_CHARS = 100


def _message(data: object, now: float, window_seconds: float) -> Message:
    """A registration's message, checked field by field: a row that ``Message`` could not read
    back would fail every report on it, and one with unbounded fields or a send time far ahead
    would be stored for good (a row expires ``window_seconds`` after ``sent_at``)."""
    if not isinstance(data, dict):
        raise Malformed("a registration needs its message as an object")
    try:
        message = Message.from_dict(data)
    except TypeError:
        raise Malformed("a registration's message has unknown or missing fields") from None
    if not (
        _text(message.provider, MAX_PROVIDER_CHARS) and _text(message.receiver, MAX_RECEIVER_CHARS)
    ):
        raise Malformed("a registration's provider or receiver is not a short enough string")
    sent_at = message.sent_at
    if (
        not isinstance(sent_at, int | float)
        or isinstance(sent_at, bool)
        or not 0 <= sent_at <= now + window_seconds  # false for NaN too
    ):
        raise Malformed("a registration's sent_at is not a time up to now")
    if not isinstance(message.context, dict) or not all(
        value is None or _text(value, MAX_CONTEXT_CHARS) or _integer(value)
        for value in _context(message.context).values()
    ):
        raise Malformed("a registration's context is not an object of short identifiers")
    statuses = message.statuses
    if not isinstance(statuses, list) or not (
        all(isinstance(s, str) and s in TWILIO_STATUSES for s in statuses)
        and len(set(statuses)) == len(statuses)
    ):
        raise Malformed("a registration's statuses are not distinct provider statuses")
    return replace(message, context=_context(message.context))


def _text(value: object, limit: int) -> bool:
    return isinstance(value, str) and len(value) <= limit


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class Receipts:
    """Registers sent messages the provider will report on; used by both flows."""

    def __init__(self, outbox: Outbox, clock: Clock) -> None:
        self.outbox = outbox
        self.clock = clock

    async def register(
        self, provider: str, message_id: str, receiver: str, context: dict[str, Any]
    ) -> None:
        message = Message(provider, receiver, self.clock(), _context(context))
        command = {"k": REGISTER, "m": asdict(message)}
        try:
            await self.outbox.send(
                Route.MESSAGE_COMMANDS, message_id.encode(), codec.dumps(command), []
            )
        except Exception as exc:  # the send is done; only its later receipts would be lost
            log.warning("could not register message for receipts (%s)", type(exc).__name__)


def _context(fields: dict[str, Any]) -> dict[str, Any]:
    return {name: fields.get(name) for name in ev.CONTEXT_FIELDS}


def update_command(request_id: str, status: str, error_code: str | None) -> bytes:
    """What a verified callback sends to ``message-commands``, keyed by the message id."""
    return codec.dumps({"k": UPDATE, "id": request_id, "status": status, "errorCode": error_code})


class ReceiptProcessor:
    """Owns the ``messages`` rows: registers messages, applies provider updates.

    ``message-commands`` is written by the service, but by anyone else who can write to the
    broker too: a command that is not one of ours is dead-lettered, never stored, so no row
    exists that a later update of its key could not read.
    """

    def __init__(
        self,
        rows: Rows,
        scan: Scan,
        outbox: Outbox,
        events: Events,
        dead_letters: DeadLetters,
        window_seconds: float,
        clock: Clock,
    ) -> None:
        self.rows = BoundedRows(rows)
        self.scan = scan
        self.outbox = outbox
        self.events = events
        self.dead_letters = dead_letters
        self.window_seconds = window_seconds
        self.clock = clock

    def load(self, key: bytes) -> Message | None:
        raw = self.rows.get(key)
        return Message.from_dict(codec.loads(raw)) if raw is not None else None

    async def handle(self, record: Inbound) -> None:
        command: dict[str, Any] = {}
        try:
            command = codec.loads_object(record.value or b"")
            await self._handle(record, command)
        except (codec.JSONDecodeError, Malformed) as exc:
            await self.dead_letters.send(record, f"not a message command: {exc}", "malformed")
        except Exception:  # the stream must go on (app.flows.otp's module docstring)
            log.exception("unexpected failure applying %s", record.source)
            await self.dead_letters.send(record, INTERNAL_ERROR)
            if command.get("k") == UPDATE:  # the callback's view waits for its answer
                await self.answer(command, 500)

    async def _handle(self, record: Inbound, command: dict[str, Any]) -> None:
        key, kind = record.key or b"", command.get("k")
        if kind == REGISTER:
            message = _message(command.get("m"), self.clock(), self.window_seconds)
            if key not in self.rows:  # a redelivered registration keeps what arrived since
                self.rows[key] = codec.dumps(asdict(message))
        elif kind == UPDATE:
            if (
                not isinstance(command.get("id"), str)
                or command.get("status") not in TWILIO_STATUSES
            ):
                raise Malformed("an update needs an id and a provider's status")
            await self.update(key, command, record.source)
        elif kind == EXPIRE:
            message = self.load(key)
            if message is not None and self.expired(message):
                del self.rows[key]
        else:
            raise Malformed(f"unknown kind {str(kind)[:20]!r}")

    async def update(self, key: bytes, command: dict[str, Any], source: str) -> None:
        message = self.load(key)
        status = 404
        if message is not None:
            status = 204
            reported = command["status"]  # one of TWILIO_STATUSES (``_handle``)
            if reported not in message.statuses:  # Twilio may repeat a status
                message.statuses.append(reported)
                self.rows[key] = codec.dumps(asdict(message))
                code = command.get("errorCode")
                await self.events.emit(
                    ev.DELIVERY_STATUS,
                    f"{key.decode('utf-8', 'replace')}/{reported}",
                    message.receiver,
                    **message.context,
                    provider=message.provider,
                    providerMessageId=key.decode("utf-8", "replace"),
                    status=reported,
                    error=f"{message.provider} error {code}" if code else None,
                )
        await self.answer(command, status)

    async def answer(self, command: dict[str, Any], status: int) -> None:
        result = {"id": command.get("id", ""), "status": status, "body": None}
        await self.outbox.send(Route.TEMPLATE_RESULTS, None, codec.dumps(result), [])

    def expired(self, message: Message) -> bool:
        return self.clock() - message.sent_at > self.window_seconds

    async def expired_keys(self) -> list[bytes]:
        return await expired_keys(self.scan, Message.from_dict, self.expired)
