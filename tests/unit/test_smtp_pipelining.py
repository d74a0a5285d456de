"""SMTP transactions on the wire: pipelined where the server offers it, and servers that answer
in odd shapes (split, bundled, endless, unasked)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Self

import aiosmtplib
import pytest
import uvloop
from hypothesis import given
from hypothesis import strategies as st

from app.channels.base import DeliveryError
from app.channels.smtp import SmtpChannel, _Replies
from tests.conftest import SmtpSink
from tests.fakes.notifications import fast_policy, notification

ENVELOPE = re.compile(rb"MAIL FROM:<otp@example\.com> SIZE=\d+\r\n")


def channel_at(port: int, **overrides) -> SmtpChannel:
    options = {
        "host": "127.0.0.1",
        "port": port,
        "security": "none",
        "username": None,
        "password": None,
        "from_email": "otp@example.com",
        "from_name": "OTP",
        "timeout": 5,
        "pool_size": 1,
        "policy": fast_policy(),
        **overrides,
    }
    return SmtpChannel(**options)


def mail(to: str = "user@example.com"):
    return notification("MAIL", to, subject="Your code", body="<p>123456</p>", text="123456")


class Loopback:
    """An asyncio server on a free loopback port for the length of an ``async with``."""

    server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


class Tap(Loopback):
    """A TCP relay in front of a server that keeps each chunk the client wrote, as read."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.chunks: list[bytes] = []

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, keep: bool
    ) -> None:
        while chunk := await reader.read(65536):
            if keep:
                self.chunks.append(chunk)
            writer.write(chunk)
            await writer.drain()
        writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
        await asyncio.gather(
            self._pump(reader, up_writer, True),
            self._pump(up_reader, writer, False),
            return_exceptions=True,
        )


async def three_mails_through_a_tap(port: int) -> list[bytes]:
    """What the client wrote, chunk by chunk, sending three mails to the server at ``port``."""
    async with Tap(port) as tap:
        channel = channel_at(tap.port)
        try:
            for n in range(3):
                await channel.send(mail(f"user{n}@example.com"))
        finally:
            await channel.close()
    return tap.chunks


@pytest.mark.parametrize("offered", [True, False], ids=["offered", "not-offered"])
async def test_the_envelope_goes_in_one_write_only_where_the_server_offers_pipelining(
    smtp_sink: SmtpSink, offered: bool
):
    smtp_sink.offer_pipelining = offered
    chunks = await three_mails_through_a_tap(smtp_sink.port)
    assert [m["To"] for m in smtp_sink.messages] == [f"user{n}@example.com" for n in range(3)]
    envelopes = [c for c in chunks if c.startswith(b"MAIL FROM")]
    assert len(envelopes) == 3
    for n, chunk in enumerate(envelopes):
        rest = ENVELOPE.sub(b"", chunk)
        if offered:
            assert rest == b"RCPT TO:<user%d@example.com>\r\nDATA\r\n" % n
        else:
            assert rest == b""  # the RCPT waits for the MAIL's reply
    if offered:
        # Per mail: the envelope, then the message with its final dot; nothing else.
        assert len([c for c in chunks if c.endswith(b"\r\n.\r\n")]) == 3


def test_a_plain_session_is_pipelined_on_uvloop(smtp_sink: SmtpSink):
    chunks = uvloop.run(three_mails_through_a_tap(smtp_sink.port))
    assert len([c for c in chunks if c.startswith(b"MAIL FROM") and b"DATA" in c]) == 3
    assert len(smtp_sink.messages) == 3


async def test_a_line_that_starts_with_a_dot_arrives_whole(smtp_sink: SmtpSink):
    session = await channel_at(smtp_sink.port)._open()
    try:
        body = b"Subject: dots\r\n\r\n.hidden\r\n..two\r\nlast line without an end"
        await session.send("otp@example.com", "user@example.com", body)
    finally:
        await session.quit()
    (message,) = smtp_sink.messages
    assert (
        message.get_content().replace("\r\n", "\n") == ".hidden\n..two\nlast line without an end\n"
    )


async def test_the_size_declared_is_the_messages_own_without_the_doubled_dots(
    smtp_sink: SmtpSink,
):
    body = b"Subject: dots\n\n.hidden\n..two\nlast"
    async with Tap(smtp_sink.port) as tap:
        session = await channel_at(tap.port)._open()
        try:
            await session.send("otp@example.com", "user@example.com", body)
        finally:
            await session.quit()
    written = b"".join(tap.chunks)
    sent = b"Subject: dots\r\n\r\n.hidden\r\n..two\r\nlast\r\n"
    assert b"MAIL FROM:<otp@example.com> SIZE=%d\r\n" % len(sent) in written
    assert b"\r\n..hidden\r\n...two\r\nlast\r\n.\r\n" in written  # stuffed on the wire


async def test_an_address_with_a_line_break_is_never_written(smtp_sink: SmtpSink):
    session = await channel_at(smtp_sink.port)._open()
    try:
        with pytest.raises(ValueError, match="line break"):
            await session.send("otp@example.com", "a@example.com\r\nRCPT TO:<b@x.y>", b"x")
        await session.send("otp@example.com", "user@example.com", b"Subject: ok\r\n\r\nok")
    finally:
        await session.quit()
    assert [m["Subject"] for m in smtp_sink.messages] == ["ok"]


Replier = Callable[[bytes, asyncio.StreamWriter], Awaitable[None]]


class ScriptedServer(Loopback):
    """Speaks SMTP on loopback, each reply written as ``reply(line, writer)`` decides: the
    shapes a real but odd server may send (replies split, bundled, endless, unasked)."""

    def __init__(self, reply: Replier, *, esmtp: bool = True) -> None:
        self._reply = reply
        self._esmtp = esmtp
        self.connections = 0
        self.lines: list[bytes] = []
        self._sessions: list[tuple[asyncio.Task, asyncio.StreamWriter]] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._sessions.append((asyncio.current_task(), writer))  # type: ignore[arg-type]
        writer.write(b"220 scripted ESMTP\r\n")
        in_data = False
        try:
            while line := await reader.readline():
                if in_data:
                    in_data = line != b".\r\n"
                    if in_data:
                        continue
                    line = b"<end of data>"
                self.lines.append(line)
                if line.startswith(b"EHLO") and not self._esmtp:
                    writer.write(b"502 5.5.1 command not recognized\r\n")
                elif line.startswith(b"EHLO"):
                    writer.write(b"250-scripted\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
                else:
                    in_data = line == b"DATA\r\n"
                    await self._reply(line, writer)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def __aexit__(self, *exc: object) -> None:
        await super().__aexit__(*exc)
        for _, writer in self._sessions:
            writer.transport.abort()  # each session's readline ends, so its task ends
        await asyncio.gather(*(task for task, _ in self._sessions), return_exceptions=True)


def standard(line: bytes) -> bytes:
    if line == b"DATA\r\n":
        return b"354 go ahead\r\n"
    if line == b"<end of data>":
        return b"250 2.0.0 queued as 4Bc1x\r\n"
    if line == b"QUIT\r\n":
        return b"221 bye\r\n"
    return b"250 ok\r\n"


async def test_replies_split_into_single_bytes_and_multiline_replies_are_read():
    async def byte_by_byte(line: bytes, writer: asyncio.StreamWriter) -> None:
        text = standard(line)
        if line.startswith(b"MAIL"):
            text = b"250-sender\r\n250-looks\r\n250 fine\r\n"
        for i in range(len(text)):
            writer.write(text[i : i + 1])
            await writer.drain()

    async with ScriptedServer(byte_by_byte) as server:
        channel = channel_at(server.port)
        try:
            accepted = await channel.send(mail())
        finally:
            await channel.close()
    assert accepted == "2.0.0 queued as 4Bc1x"


async def test_an_endless_reply_is_a_bounded_failure():
    async def endless(line: bytes, writer: asyncio.StreamWriter) -> None:
        if line.startswith(b"MAIL"):
            for _ in range(64):  # 4 MiB of one reply line, never ended
                writer.write(b"250" + b"-" * 65533)
                await writer.drain()
        else:
            writer.write(standard(line))

    async with ScriptedServer(endless) as server:
        channel = channel_at(server.port, policy=fast_policy(timeout=5, max_attempts=1))
        try:
            with pytest.raises(DeliveryError) as err:
                await channel.send(mail())
        finally:
            await channel.close()
    assert str(err.value) == "smtp delivery failed: malformed server reply"


async def test_a_reply_nobody_asked_for_retires_the_session_without_a_failed_send():
    async def chatty(line: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(standard(line))
        if line == b"<end of data>":
            writer.write(b"421 4.4.2 closing for maintenance\r\n")

    async with ScriptedServer(chatty) as server:
        channel = channel_at(server.port, policy=fast_policy(max_attempts=1))
        try:
            await channel.send(mail("first@example.com"))
            await asyncio.sleep(0.05)  # the 421 arrives
            await channel.send(mail("second@example.com"))
        finally:
            await channel.close()
    assert channel.connections_opened == 2 and server.connections == 2
    assert server.lines.count(b"<end of data>") == 2


reply_text = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=0, max_size=40)
replies = st.lists(
    st.tuples(st.integers(200, 599), st.lists(reply_text, min_size=1, max_size=4)),
    min_size=1,
    max_size=6,
)


@given(replies, st.data())
def test_replies_are_read_whole_however_the_bytes_are_cut(expected, data):
    wire = b"".join(
        b"".join(
            b"%d%s%s\r\n" % (code, b"-" if i < len(lines) - 1 else b" ", line.encode())
            for i, line in enumerate(lines)
        )
        for code, lines in expected
    )
    cuts = sorted(data.draw(st.sets(st.integers(1, max(1, len(wire) - 1)), max_size=10)))
    reader = _Replies()
    for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        reader.data_received(wire[start:end])
    assert reader.failure is None
    assert [(r.code, r.message) for r in reader._ready] == [
        (code, "\n".join(lines)) for code, lines in expected
    ]


@given(st.lists(st.binary(max_size=20_000), max_size=30))
def test_any_bytes_from_a_server_end_in_replies_or_one_failure_and_a_bounded_buffer(chunks):
    reader = _Replies()
    for chunk in chunks:
        reader.data_received(chunk)  # never raises
        assert len(reader._buffer) <= 8192 + 20_000
    assert reader.failure is None or isinstance(reader.failure, aiosmtplib.SMTPException)


async def test_a_server_that_knows_no_ehlo_is_greeted_with_helo_and_sent_one_command_at_a_time():
    async def plain(line: bytes, writer: asyncio.StreamWriter) -> None:
        writer.write(standard(line))

    async with ScriptedServer(plain, esmtp=False) as server:
        channel = channel_at(server.port)
        try:
            assert await channel.send(mail()) == "2.0.0 queued as 4Bc1x"
        finally:
            await channel.close()
    assert [line.split(b" ")[0].strip() for line in server.lines[:5]] == [
        b"EHLO",
        b"HELO",
        b"MAIL",
        b"RCPT",
        b"DATA",
    ]
    assert server.lines[2] == b"MAIL FROM:<otp@example.com>\r\n"  # no SIZE: not offered


class Closing:
    """What ``_Replies`` needs of its transport: ``close``, counted."""

    closed = 0

    def close(self) -> None:
        self.closed += 1


def test_a_flood_of_replies_nobody_asked_for_fails_the_session_and_stops_reading():
    reader = _Replies()
    transport = Closing()
    reader.transport = transport  # type: ignore[assignment]
    reader.data_received(b"250 ok\r\n" * 10_000)
    assert isinstance(reader.failure, aiosmtplib.SMTPResponseException)
    assert reader.queued <= 9 and transport.closed == 1
    reader.data_received(b"250 ok\r\n" * 10_000)
    assert reader.queued <= 9 and not reader._buffer


async def test_the_envelope_sender_is_the_address_alone(smtp_sink: SmtpSink):
    channel = channel_at(smtp_sink.port, from_email="OTP Service <otp@example.com>")
    try:
        await channel.send(mail())
    finally:
        await channel.close()
    assert [e.mail_from for e in smtp_sink.envelopes] == ["otp@example.com"]


@pytest.mark.parametrize("sender", ["otp service@example.com", "é@x.y"])
def test_a_sender_that_cannot_go_into_mail_from_is_refused_at_the_start(sender: str):
    with pytest.raises(ValueError):
        channel_at(1, from_email=sender)
