"""Delivery receipts: Twilio's signature as documented, and the ``messages`` rows' handler."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app import codec
from app.flows import MAX_ROW_BYTES, BoundedRows, DeadLetters, Inbound, Route, RowTooLarge
from app.flows.events import Events
from app.flows.receipts import (
    ReceiptProcessor,
    Receipts,
    signature_ok,
    twilio_signature,
    update_command,
)
from app.metrics import Metrics
from tests.fakes.flows import Clock, Outbox, scan_of

# Twilio's worked example ("Webhooks security"): auth token 12345, this URL and these parameters.
TWILIO_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
TWILIO_PARAMS = [
    ("CallSid", "CA1234567890ABCDE"),
    ("Caller", "+12349013030"),
    ("Digits", "1234"),
    ("From", "+12349013030"),
    ("To", "+18005551212"),
]
SID = "SM" + "ab" * 16


def test_twilio_documented_example_signature():
    assert twilio_signature("12345", TWILIO_URL, TWILIO_PARAMS) == "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
    shuffled = list(reversed(TWILIO_PARAMS))
    assert signature_ok("12345", TWILIO_URL, shuffled, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=")
    assert not signature_ok("12345", TWILIO_URL, TWILIO_PARAMS, None)
    assert not signature_ok("12345", TWILIO_URL, TWILIO_PARAMS, "0/KCTR6DLpKmkAf8muzZqo1nDgQ")
    assert not signature_ok("54321", TWILIO_URL, TWILIO_PARAMS, "0/KCTR6DLpKmkAf8muzZqo1nDgQ=")


texts = st.text(max_size=30)


@given(token=texts, url=texts, params=st.dictionaries(texts, texts, max_size=6), other=texts)
def test_signature_is_twilios_and_any_change_breaks_it(token, url, params, other):
    data = url + "".join(k + params[k] for k in sorted(params))
    expected = base64.b64encode(hmac.new(token.encode(), data.encode(), hashlib.sha1).digest())
    items = list(params.items())
    assert twilio_signature(token, url, items) == expected.decode()
    assert signature_ok(token, url, items, expected.decode())
    if other != url:
        assert not signature_ok(token, other, items, expected.decode())


class Service:
    def __init__(self) -> None:
        self.rows: dict[bytes, bytes] = {}
        self.outbox = Outbox()
        self.clock = Clock()
        metrics = Metrics()
        events = Events(self.outbox, metrics, self.clock)
        self.processor = ReceiptProcessor(
            self.rows,
            scan_of(self.rows),
            self.outbox,
            events,
            DeadLetters(self.outbox, metrics),
            3600,
            self.clock,
        )
        self.receipts = Receipts(self.outbox, self.clock)

    def play(self) -> None:
        """Hand every message command produced so far to the processor, in order."""
        pending = [s for s in self.outbox.sent if s[0] is Route.MESSAGE_COMMANDS]
        self.outbox.sent = [s for s in self.outbox.sent if s[0] is not Route.MESSAGE_COMMANDS]
        for n, (_, key, value, _) in enumerate(pending):
            asyncio.run(self.processor.handle(Inbound("m", 0, n, key, value, [], None)))

    def update(self, status: str, code: str | None = None, sid: str = SID) -> dict[str, Any]:
        record = Inbound("m", 0, 99, sid.encode(), update_command("r1", status, code), [], None)
        asyncio.run(self.processor.handle(record))
        [result] = self.outbox.on(Route.TEMPLATE_RESULTS)[-1:]
        return result


def test_reports_of_a_registered_message_become_ordered_events_once():
    svc = Service()
    context = {"processInstanceId": 5, "clientId": "c1", "channel": "SMS", "code": "never"}
    asyncio.run(svc.receipts.register("twilio", SID, "+40712345678", context))
    svc.play()
    for status in ("queued", "sent", "sent", "undelivered"):
        result = svc.update(status, "30003" if status == "undelivered" else None)
        assert result == {"id": "r1", "status": 204, "body": None}
    events = svc.outbox.on(Route.EVENTS)
    assert [e["status"] for e in events] == ["queued", "sent", "undelivered"]
    assert {e["type"] for e in events} == {"delivery.status"}
    assert events[-1]["error"] == "twilio error 30003" and events[0]["clientId"] == "c1"
    assert events[0]["providerMessageId"] == SID and events[0]["receiver"] == "+40712345678"
    assert "never" not in str(events)  # only the context fields are kept


def test_unknown_messages_are_404_and_change_nothing():
    svc = Service()
    assert svc.update("delivered")["status"] == 404
    assert svc.rows == {} and svc.outbox.on(Route.EVENTS) == []


def test_registration_redelivered_keeps_the_reports_and_rows_expire():
    svc = Service()
    asyncio.run(svc.receipts.register("twilio", SID, "+40712345678", {}))
    again = list(svc.outbox.sent)
    svc.play()
    svc.update("queued")
    svc.outbox.sent += again  # the registration read again after a rebalance
    svc.play()
    assert codec.loads(svc.rows[SID.encode()])["statuses"] == ["queued"]
    svc.clock.now += 3601
    [key] = asyncio.run(svc.processor.expired_keys())
    asyncio.run(svc.processor.handle(Inbound("m", 0, 7, key, b'{"k":"x"}', [], None)))
    assert svc.rows == {}


def test_a_row_too_large_for_its_changelog_is_refused_and_the_processor_goes_on():
    """Stored, a row over a producer request would stop the worker at its changelog write, and
    again at every later write of its key: it is refused before it reaches the table."""
    svc = Service()
    huge = codec.dumps({"k": "m", "m": {"provider": "twilio", "pad": "A" * MAX_ROW_BYTES}})
    asyncio.run(svc.processor.handle(Inbound("m", 0, 1, b"SM1", huge, [], None)))
    assert svc.rows == {}
    small = codec.dumps(
        {"k": "m", "m": {"provider": "twilio", "receiver": "+40712345678", "sent_at": 1.0}}
    )
    asyncio.run(svc.processor.handle(Inbound("m", 0, 2, b"SM2", small, [], None)))
    assert list(svc.rows) == [b"SM2"]


def test_bounded_rows_refuse_only_what_is_over_the_limit():
    rows: dict[bytes, bytes] = {}
    bounded = BoundedRows(rows, limit=10)
    bounded[b"k"] = b"123456789"
    with pytest.raises(RowTooLarge):
        bounded[b"k"] = b"1234567890"
    assert rows == {b"k": b"123456789"} and b"k" in bounded and len(bounded) == 1
    del bounded[b"k"]
    assert bounded.get(b"k") is None


def dead_letters(svc: Service) -> list[bytes]:
    return [
        reason
        for *_, headers in svc.outbox.sent
        for name, reason in headers
        if name == "x-dlq-reason"
    ]


HOSTILE_COMMANDS = [
    b"[]",
    b"null",
    b"\xff",
    b'{"k":"zz"}',
    b'{"k":"m"}',
    b'{"k":"m","m":[1]}',
    b'{"k":"m","m":{"provider":"twilio"}}',
    b'{"k":"m","m":{"provider":"twilio","receiver":"+1","sent_at":"yesterday"}}',
    b'{"k":"m","m":{"provider":"twilio","receiver":"+1","sent_at":1,"statuses":{}}}',
    b'{"k":"m","m":{"provider":"twilio","receiver":"+1","sent_at":1,"extra":1}}',
    b'{"k":"u","status":"sent"}',
    b'{"k":"u","id":"r9","status":"made up"}',
]


def registration(**fields: Any) -> bytes:
    message = {"provider": "twilio", "receiver": "+1", "sent_at": 1_000_000.0, **fields}
    return codec.dumps({"k": "m", "m": message})


#: Registrations that would be stored unbounded, or for good.
UNBOUNDED_REGISTRATIONS = [
    registration(context={"clientId": "A" * 880_000}),  # 880 KB row, every report copies it
    registration(context={"clientId": "A" * 201}),
    registration(context={"clientId": {"nested": [1]}}),
    registration(context={"clientId": 1.5}),
    registration(context={"clientId": True}),
    registration(receiver="+" + "1" * 5000),
    registration(provider="t" * 101),
    registration(sent_at=1e300),  # never expires
    registration(sent_at=1_000_000.0 + 3601),  # more than a window ahead
    registration(sent_at=-1),
    registration(statuses=["delivered"] * 100_000),
    registration(statuses=["made up"]),
    registration(statuses=[1]),
]


@pytest.mark.parametrize("value", HOSTILE_COMMANDS + UNBOUNDED_REGISTRATIONS)
def test_commands_not_of_ours_are_dead_lettered_and_store_nothing(value):
    """Anyone who can write to the broker can write to ``message-commands``: such a record is
    copied to the DLQ with its reason, and no row is left that a later report could not read."""
    svc = Service()
    asyncio.run(svc.processor.handle(Inbound("m", 0, 1, SID.encode(), value, [], None)))
    assert svc.rows == {}
    [reason] = dead_letters(svc)
    assert reason.startswith(b"not a message command: ")
    assert svc.update("delivered")["status"] == 404  # the key still works


def test_a_registration_within_the_bounds_is_stored():
    svc = Service()
    context = {"clientId": "A" * 200, "processInstanceId": 2**62, "identifier": None}
    command = registration(
        context=context, receiver="x" * 4096, sent_at=1_000_000.0 + 3600, statuses=["sent"]
    )
    asyncio.run(svc.processor.handle(Inbound("m", 0, 1, SID.encode(), command, [], None)))
    assert svc.update("delivered")["status"] == 204
    [event] = svc.outbox.on(Route.EVENTS)
    assert event["clientId"] == "A" * 200 and event["processInstanceId"] == 2**62


def test_a_registered_context_keeps_only_the_event_fields():
    """A context naming an event's own fields (``status``) would fail every report on it."""
    svc = Service()
    message = {"provider": "twilio", "receiver": "+1", "sent_at": 1.0, "context": {"status": 1}}
    command = codec.dumps({"k": "m", "m": message})
    asyncio.run(svc.processor.handle(Inbound("m", 0, 1, SID.encode(), command, [], None)))
    assert svc.update("delivered")["status"] == 204
    [event] = svc.outbox.on(Route.EVENTS)
    assert event["status"] == "delivered"


def test_an_update_that_fails_is_answered_and_dead_lettered():
    """The callback's view waits for an answer: a failure applying the report answers it 500
    (the view says 503, so Twilio retries) instead of leaving it to time out."""
    svc = Service()
    asyncio.run(svc.receipts.register("twilio", SID, "+40712345678", {}))
    svc.play()

    def broken(event_type: str, *args: Any, **fields: Any) -> None:
        raise RuntimeError("the events topic is away")

    svc.processor.events.emit = broken  # type: ignore[method-assign]
    assert svc.update("delivered")["status"] == 500
    assert dead_letters(svc) == [b"internal error while handling the request"]
