"""A provider that quotes the message back: its text must not carry the code anywhere.

Content filters and some servers answer DATA with the Subject they judged (``message with
Subject '709960 is your code' deferred``). The service used to keep that text, and with it a
live code, in the retry warning, the reply, the event, the ``otps`` row's history and so the
send log. The OTP flows run here over a real SMTP dialogue (aiosmtpd) with the JSON logging
the worker uses.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import io
import logging
import logging.config
import re
from collections.abc import Iterator
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from app import codec
from app.channels.base import DeliveryError, Notification
from app.channels.smtp import SmtpChannel
from app.flows import Route
from app.logs import SERVICE_LOGGERS, logging_config
from devtools.support import free_port
from tests.fakes.notifications import fast_policy
from tests.unit.test_flows_otp import Service


class EchoingServer:
    """Answers the first DATA commands with ``replies`` (each quoting the Subject), then 250."""

    def __init__(self, *replies: int) -> None:
        self.replies = list(replies)
        self.subjects: list[str] = []
        self.port = free_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.subjects.append(str(message["Subject"]))
        if self.replies:
            code = self.replies.pop(0)
            return f"{code} content filter: message with Subject '{message['Subject']}' deferred"
        return "250 OK queued"


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    logging.config.dictConfig(logging_config("INFO", "json"))
    stream = io.StringIO()
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    yield stream
    logging.config.dictConfig({"version": 1, "disable_existing_loggers": False})
    for name in SERVICE_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)


def run_against(server: EchoingServer) -> tuple[Service, dict[str, Any], str]:
    svc = Service()
    svc.templates.add(
        "otpMail", "MAIL", "<p>[(${otpValue})]</p>", subject="[(${otpValue})] is your code"
    )
    svc.channels["MAIL"] = SmtpChannel(
        host="127.0.0.1",
        port=server.port,
        security="none",
        username=None,
        password=None,
        from_email="otp@example.com",
        from_name="OTP",
        timeout=5,
        pool_size=1,
        policy=fast_policy(),
    )
    server.controller.start()
    try:
        reply = asyncio.run(svc.generate())
    finally:
        server.controller.stop()
    code = re.search(r"\d{6}", server.subjects[0])
    assert code is not None
    return svc, reply, code.group(0)


def test_a_refused_attempt_then_a_sent_code_logs_no_code(logs: io.StringIO):
    svc, reply, code = run_against(EchoingServer(451))
    assert reply["otpSent"] is True
    assert asyncio.run(svc.validate(code))["otpValid"] is True  # the live code
    assert "smtp attempt 1 failed (451); retrying" in logs.getvalue()
    assert code not in logs.getvalue()


def test_a_refused_send_keeps_the_code_out_of_reply_event_row_and_log(logs: io.StringIO):
    svc, reply, code = run_against(EchoingServer(554))
    assert reply["otpSent"] is False and reply["error"] == "smtp delivery failed: 554"
    events = [value for route, _, value, _ in svc.outbox.sent if route is Route.EVENTS]
    assert events and all(code.encode() not in value for value in events)
    assert svc.otps and all(code.encode() not in row for row in svc.otps.values())
    assert code not in codec.dumps(reply).decode() and code not in logs.getvalue()


class QuotingChannel:
    """A provider whose error quotes what it was sent, as no channel here keeps it."""

    def check_recipient(self, recipient: str) -> str | None:
        return None

    async def send(self, notification: Notification) -> None:
        raise DeliveryError("quoting", f"refused {notification.body!r}")

    async def close(self) -> None:
        return None


def test_whatever_a_channel_keeps_of_a_provider_text_the_code_is_masked():
    svc = Service()
    svc.channels["MAIL"] = QuotingChannel()
    reply = asyncio.run(svc.generate())
    assert reply["error"] == "quoting delivery failed: refused '<p>***</p>'"
    assert all(b"refused '<p>***</p>'" in row for row in svc.otps.values())
