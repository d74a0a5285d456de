"""MAIL over real SMTP servers (aiosmtpd) with TLS and AUTH, and SMTP-level retries."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvloop

from app.channels.base import DeliveryError
from app.channels.smtp import SmtpChannel
from tests.fakes.certs import Certs, make_certs
from tests.fakes.notifications import fast_policy, notification
from tests.fakes.smtp import TlsSmtpServer

USER, PASSWORD = "otp-sender", "s3cret-smtp-pass"
# Implicit TLS: the transport is TLS, which aiosmtpd's AUTH-needs-STARTTLS check cannot see.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(
    params=[("starttls", True), ("tls", True), ("starttls", False)],
    ids=["starttls", "tls", "starttls-unpipelined"],
)
def server(request, certs: Certs) -> Iterator[TlsSmtpServer]:
    mode, pipelining = request.param
    with TlsSmtpServer(
        certs, mode=mode, username=USER, password=PASSWORD, pipelining=pipelining
    ) as srv:
        yield srv


def channel_for(server: TlsSmtpServer, ca_file: Path | None, **overrides) -> SmtpChannel:
    options = {
        "host": "127.0.0.1",
        "port": server.port,
        "security": server.mode,
        "username": USER,
        "password": PASSWORD,
        "from_email": "otp@example.com",
        "from_name": "OTP",
        "timeout": 5,
        "pool_size": 2,
        "ca_file": str(ca_file) if ca_file else None,
        "policy": fast_policy(),
        **overrides,
    }
    return SmtpChannel(**options)


def mail(to: str = "user@example.com"):
    return notification("MAIL", to, subject="Your code", body="<p>123456</p>", text="123456")


async def two_mails(server: TlsSmtpServer, certs: Certs) -> int:
    """Sends two mails on one channel; the sessions it opened."""
    channel = channel_for(server, certs.ca_file)
    try:
        await channel.send(mail())
        await channel.send(mail("other@example.com"))
    finally:
        await channel.close()
    return channel.connections_opened


async def test_tls_and_auth_with_the_configured_ca(server: TlsSmtpServer, certs: Certs):
    assert await two_mails(server, certs) == 1
    assert [m["To"] for m in server.messages] == ["user@example.com", "other@example.com"]
    assert server.auth_ok == [True]  # one session, authenticated once, reused
    if server.mode == "starttls":
        assert server.tls_sessions == [True]


async def test_unknown_ca_is_refused_without_retry(server: TlsSmtpServer):
    channel = channel_for(server, None)  # the system CAs do not know the test CA
    try:
        with pytest.raises(DeliveryError) as err:
            await channel.send(mail())
    finally:
        await channel.close()
    assert str(err.value) == "smtp delivery failed: TLS certificate verification failed"
    assert server.auth_ok == [] and server.messages == []


async def test_wrong_password_is_final_and_never_shown(server: TlsSmtpServer, certs: Certs):
    channel = channel_for(server, certs.ca_file, password="wrong-pass-91c3")
    try:
        with pytest.raises(DeliveryError) as err:
            await channel.send(mail())
    finally:
        await channel.close()
    assert str(err.value) == "smtp delivery failed: 535 authentication failed"
    assert server.auth_ok and not any(server.auth_ok)  # each offered mechanism refused once
    assert "wrong-pass" not in str(err.value) and PASSWORD not in str(err.value)


async def test_4xx_is_retried(server: TlsSmtpServer, certs: Certs):
    server.data_script.extend(["451 4.3.0 try again later", "421 4.7.0 busy"])
    channel = channel_for(server, certs.ca_file)
    try:
        await channel.send(mail())
    finally:
        await channel.close()
    assert server.data_commands == 3 and len(server.messages) == 1


async def test_5xx_is_not_retried(server: TlsSmtpServer, certs: Certs):
    server.data_script.append("554 5.7.1 message rejected")
    channel = channel_for(server, certs.ca_file)
    try:
        with pytest.raises(DeliveryError) as err:
            await channel.send(mail())
    finally:
        await channel.close()
    assert str(err.value) == "smtp delivery failed: 554 5.7.1"
    assert server.data_commands == 1 and server.messages == []


async def test_4xx_forever_gives_up_within_the_budget(server: TlsSmtpServer, certs: Certs):
    server.data_script.extend(["450 4.2.0 mailbox busy"] * 20)
    channel = channel_for(server, certs.ca_file, policy=fast_policy(timeout=3, max_attempts=3))
    try:
        with pytest.raises(DeliveryError) as err:
            await channel.send(mail())
    finally:
        await channel.close()
    assert str(err.value) == "smtp delivery failed: 450 4.2.0 after 3 attempts"
    assert server.data_commands == 3


async def test_a_server_that_never_answers_is_bounded(certs: Certs):
    import socket

    with socket.socket() as silent:  # accepts TCP connections, never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        channel = SmtpChannel(
            host="127.0.0.1",
            port=silent.getsockname()[1],
            security="starttls",
            username=None,
            password=None,
            from_email="otp@example.com",
            from_name="OTP",
            timeout=60,  # the per-command timeout alone would wait a minute
            pool_size=1,
            ca_file=str(certs.ca_file),
            policy=fast_policy(timeout=1.5),
        )
        started = time.monotonic()
        try:
            with pytest.raises(DeliveryError) as err:
                await channel.send(mail())
        finally:
            await channel.close()
        assert time.monotonic() - started < 1.5 + 0.5
        assert str(err.value).startswith("smtp delivery failed: timeout")


async def test_refused_recipient_is_final_and_keeps_the_session(
    server: TlsSmtpServer, certs: Certs
):
    channel = channel_for(server, certs.ca_file)
    try:
        with pytest.raises(DeliveryError) as err:
            await channel.send(mail("reject-me@example.com"))
        await channel.send(mail())
    finally:
        await channel.close()
    assert str(err.value) == "smtp delivery failed: recipient refused (550)"
    assert channel.connections_opened == 1 and len(server.messages) == 1


async def test_temporarily_refused_recipient_is_retried(server: TlsSmtpServer, certs: Certs):
    channel = channel_for(server, certs.ca_file, policy=fast_policy(timeout=3, max_attempts=2))
    try:
        with pytest.raises(DeliveryError) as err:
            await channel.send(mail("busy@example.com"))
    finally:
        await channel.close()
    assert str(err.value) == "smtp delivery failed: recipient refused (452) after 2 attempts"


def test_the_channel_runs_on_uvloop(server: TlsSmtpServer, certs: Certs):
    """``EVENT_LOOP=uvloop``: its transports are not asyncio's classes, and TLS is its own."""
    assert uvloop.run(two_mails(server, certs)) == 1
    assert [m["To"] for m in server.messages] == ["user@example.com", "other@example.com"]
