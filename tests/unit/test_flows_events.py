"""Delivery events from both flows: which steps emit which, ids stable, nothing secret."""

from __future__ import annotations

import re
from typing import Any

from app import codec
from app.flows import Route
from app.flows.events import TYPES, event_id, iso_utc
from tests.unit.test_flows_notify import WELCOME
from tests.unit.test_flows_notify import Service as NotifyService
from tests.unit.test_flows_otp import Service as OtpService
from tests.unit.test_flows_otp import run

ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def events(outbox: Any) -> list[tuple[bytes, dict[str, Any]]]:
    return [
        (key, codec.loads(value)) for route, key, value, _ in outbox.sent if route is Route.EVENTS
    ]


def test_generate_wrong_and_right_validate_emit_their_events_in_order():
    svc = OtpService()
    run(svc.generate())
    code = svc.last_code()
    wrong = "000000" if code != "000000" else "111111"
    run(svc.validate(wrong))
    run(svc.validate(code))
    emitted = events(svc.outbox)
    assert [e["type"] for _, e in emitted] == ["otp.sent", "otp.attempt_failed", "otp.validated"]
    assert {key for key, _ in emitted} == {b"ann@example.com"}
    sent, failed, validated = (e for _, e in emitted)
    assert sent["receiver"] == "ann@example.com" and sent["provider"] is None  # a fake channel
    assert sent["clientId"] == "c1" and sent["templateName"] == "otpMail"
    assert failed["error"] == "invalid code" and failed["receiver"] == "ann@example.com"
    assert validated["status"] == "valid" and validated["error"] is None
    assert all(ISO.fullmatch(e["at"]) for _, e in emitted)
    assert len({e["eventId"] for _, e in emitted}) == 3
    text = str(emitted)
    assert code not in text and "<p>" not in text  # no code, no rendered body


def test_a_redelivered_validate_or_generate_emits_nothing_again():
    svc = OtpService()
    request = {
        "processInstanceId": 7,
        "templateName": "otpMail",
        "channel": "MAIL",
        "recipient": "ann@example.com",
        "clientId": "c1",
    }
    run(svc.run("g", request, offset=500))
    run(svc.run("g", request, offset=500))
    assert [e["type"] for _, e in events(svc.outbox)] == ["otp.sent"]


def test_the_locking_attempt_emits_locked_once():
    svc = OtpService()  # max_attempts=3
    run(svc.generate())
    for _ in range(4):
        run(svc.validate("999999" if svc.last_code() != "999999" else "888888"))
    types = [e["type"] for _, e in events(svc.outbox)]
    assert types == ["otp.sent", *["otp.attempt_failed"] * 3, "otp.locked", "otp.attempt_failed"]


def test_refused_send_and_expiry_are_events():
    svc = OtpService()
    run(svc.generate(templateName="nope"))
    run(svc.generate(clientId="c2", recipient="bob@example.com"))
    svc.clock.now += 60 + 600 + 1  # ttl + send window
    for key in run(svc.flows.processor.expired_keys()):
        run(svc.flows.processor.expire(key))
    kinds = [(key, e["type"], e["error"]) for key, e in events(svc.outbox)]
    assert kinds == [
        (b"ann@example.com", "otp.send_refused", "template 'nope' not found"),
        (b"bob@example.com", "otp.sent", None),
        (b"bob@example.com", "otp.expired", None),
    ]


def test_a_notification_to_two_receivers_is_two_events_and_a_replay_none():
    svc = NotifyService()
    svc.mail.refused["b@x.example"] = "recipient refused (550)"
    run(svc.send({**WELCOME, "receivers": ["a@x.example", "b@x.example"]}))
    run(svc.play(svc.commands[-1]))
    emitted = {key: e for key, e in events(svc.outbox)}
    assert len(events(svc.outbox)) == 2
    assert emitted[b"a@x.example"]["type"] == "notification.sent"
    failed = emitted[b"b@x.example"]
    assert failed["type"] == "notification.failed" and "550" in failed["error"]
    assert failed["templateName"] == "welcomeLetter" and failed["processInstanceId"] == "4242"
    assert "Welcome" not in str(emitted)


def test_forwarded_and_refused_notifications_have_an_event_per_receiver():
    svc = NotifyService()
    forward = {**WELCOME, "templateName": "forwarded", "contentParams": {"name": "x"}}
    run(svc.send({**forward, "receivers": ["a@x.example", "b@x.example"]}))
    run(svc.send({**WELCOME, "templateName": "nope", "receivers": ["c@x.example"]}))
    kinds = [(key, e["type"], e["provider"]) for key, e in events(svc.outbox)]
    assert kinds == [
        (b"a@x.example", "notification.forwarded", "kafka"),
        (b"b@x.example", "notification.forwarded", "kafka"),
        (b"c@x.example", "notification.failed", None),
    ]


def test_event_ids_are_the_step_and_nothing_else():
    assert event_id("t/0/1", "otp.sent", "a") == event_id("t/0/1", "otp.sent", "a")
    ids = {event_id(s, t, r) for s in ("t/0/1", "t/0/2") for t in TYPES for r in ("a", "b")}
    assert len(ids) == 2 * len(TYPES) * 2
    assert iso_utc(0) == "1970-01-01T00:00:00.000Z"


def test_the_per_receiver_limit_refusal_is_an_event_once():
    svc = OtpService(max_sends_per_receiver=1)
    run(svc.generate())
    request = {
        "processInstanceId": 9,
        "templateName": "otpMail",
        "channel": "MAIL",
        "recipient": "ann@example.com",
        "clientId": "c9",
    }
    assert run(svc.run("g", request, offset=700))["otpSent"] is False
    run(svc.run("g", request, offset=700))  # redelivered
    refusals = [e for _, e in events(svc.outbox) if e["type"] == "otp.send_refused"]
    assert len(refusals) == 1 and refusals[0]["error"].startswith("too many codes sent to this")
