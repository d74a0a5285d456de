"""MAIL over SMTP: a small pool of kept-open sessions, each mail one pipelined transaction.

Opening an SMTP session (TCP, greeting, EHLO, STARTTLS, AUTH) costs several round trips; doing
it once per OTP would dominate the cost of a send. Sessions are opened lazily, reused while
the server keeps them, reopened once when it has dropped them, and closed on shutdown.

aiosmtplib opens each session; the mail transactions then run on its transport here
(``_Session``). A server that offers PIPELINING (RFC 2920: Postfix, Exim, the big providers)
gets ``MAIL``, ``RCPT`` and ``DATA`` in one write and the message in a second: two round trips
a mail instead of four, and half the writes, each of which wakes the server. aiosmtplib cannot
pipeline: its protocol reads one reply per command and drops any other that arrives.

Each send runs through the shared retry helper (:mod:`app.channels.retry`): SMTP 4xx replies
(greylisting, "try again later"), timeouts and connection failures are retried within
``DELIVERY_TIMEOUT_SECONDS``; 5xx replies (unknown mailbox, rejected) are final.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from collections import deque
from typing import cast

import aiosmtplib
import aiosmtplib.email

from app.channels.base import DeliveryError, Notification
from app.channels.mime import build_mail
from app.channels.retry import Delivery, RetryPolicy

PROVIDER = "smtp"
# One plain address: no display name, no list, no CR/LF (header injection), no spaces.
_ADDRESS = re.compile(
    r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+"
)
# A server may hold a session open for a while but drops idle ones eventually; reconnecting
# before sending is cheaper than a failed send and a retry.
_MAX_IDLE_SECONDS = 30.0
# RFC 5321 allows 512 octets a reply line; these are aiosmtplib's bounds, so a server that
# answers without end costs a bounded buffer and a failed send.
_MAX_REPLY_LINE = 8192
_MAX_REPLY = 4 * _MAX_REPLY_LINE
# A pipelined envelope has three replies outstanding; more queued is a server talking to itself,
# and each would hold memory until the next mail.
_MAX_QUEUED_REPLIES = 8
_LINE_ENDINGS = re.compile(rb"\r\n|\r|\n")
_LEADING_DOT = re.compile(rb"(?m)^\.")
_LINE_BREAK = re.compile(rb"[\r\n]")


def check_address(recipient: str) -> str | None:
    if len(recipient) > 254 or not _ADDRESS.fullmatch(recipient):
        return "recipient must be one e-mail address (user@domain)"
    return None


class _RecipientRefused(DeliveryError):
    """The server refused the address; the session itself stays usable."""


class _Replies(asyncio.Protocol):
    """The server's replies on one session, in order, however many one read brings."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._lines: list[str] = []
        self._size = 0
        self._ready: deque[aiosmtplib.SMTPResponse] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.failure: aiosmtplib.SMTPException | None = None
        self.transport: asyncio.BaseTransport | None = None

    @property
    def queued(self) -> int:
        return len(self._ready)

    def data_received(self, data: bytes) -> None:
        if self.failure is not None:
            return
        self._buffer += data
        try:
            self._parse()
        except aiosmtplib.SMTPResponseException as exc:
            self._fail(exc)
        self._wake()

    def _parse(self) -> None:
        start = 0
        while (end := self._buffer.find(b"\n", start)) >= 0:
            line = bytes(self._buffer[start : end + 1])
            start = end + 1
            if len(line) > _MAX_REPLY_LINE:
                raise aiosmtplib.SMTPResponseException(-1, "Response too long")
            code = line[:3]
            if not code.isdigit() or line[3:4] not in (b" ", b"-", b"\r", b"\n"):
                raise aiosmtplib.SMTPResponseException(-1, "Malformed SMTP response line")
            self._size += len(line)
            if self._size > _MAX_REPLY:
                raise aiosmtplib.SMTPResponseException(-1, "Response too long")
            self._lines.append(line[4:].strip(b" \t\r\n").decode("utf-8", "surrogateescape"))
            if line[3:4] != b"-":
                self._ready.append(aiosmtplib.SMTPResponse(int(code), "\n".join(self._lines)))
                self._lines, self._size = [], 0
                if len(self._ready) > _MAX_QUEUED_REPLIES:
                    raise aiosmtplib.SMTPResponseException(-1, "Replies nobody asked for")
        del self._buffer[:start]
        if len(self._buffer) > _MAX_REPLY_LINE:
            raise aiosmtplib.SMTPResponseException(-1, "Response too long")

    def eof_received(self) -> bool:
        self._fail(aiosmtplib.SMTPServerDisconnected("Unexpected EOF received"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(aiosmtplib.SMTPServerDisconnected("Connection lost"))

    def _fail(self, exc: aiosmtplib.SMTPException) -> None:
        if self.failure is None:
            self.failure = exc
        self._buffer.clear()
        if self.transport is not None:
            self.transport.close()  # reads nothing more from a server that broke the dialogue
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def next(self, timeout: float) -> aiosmtplib.SMTPResponse:
        """The next reply; waits at most ``timeout`` seconds for it to arrive."""
        if not self._ready and self.failure is None:
            async with asyncio.timeout(timeout):
                while not self._ready and self.failure is None:  # woken by every read
                    self._waiter = asyncio.get_running_loop().create_future()
                    await self._waiter
        if self._ready:
            return self._ready.popleft()
        raise self.failure or aiosmtplib.SMTPServerDisconnected("Connection lost")


class _Session:
    """One SMTP session that aiosmtplib opened (TCP, TLS, EHLO, AUTH), now driven here."""

    def __init__(self, client: aiosmtplib.SMTP, timeout: float) -> None:
        if client.transport is None or client.transport.is_closing():
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        # uvloop's transports have asyncio's methods without its classes, so no isinstance.
        transport = cast(asyncio.WriteTransport, client.transport)
        self._transport = transport
        self._replies = _Replies()
        self._replies.transport = transport
        transport.set_protocol(self._replies)
        self._timeout = timeout
        self.pipelining = client.supports_extension("pipelining")
        self._size = client.supports_extension("size")

    @property
    def usable(self) -> bool:
        """Open, and nothing said that no command asked for (a ``421`` on the way out)."""
        replies = self._replies
        return not self._transport.is_closing() and not replies.queued and not replies.failure

    def _write(self, data: bytes) -> None:
        if self._transport.is_closing():
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        self._transport.write(data)

    async def _commands(self, *commands: bytes) -> list[aiosmtplib.SMTPResponse]:
        """Each command's reply. Pipelined: all in one write. Otherwise one at a time, up to
        the first refusal (a ``DATA`` is never sent after a refused ``RCPT``)."""
        if self.pipelining:
            self._write(b"".join(commands))
            return [await self._replies.next(self._timeout) for _ in commands]
        replies = []
        for command in commands:
            self._write(command)
            reply = await self._replies.next(self._timeout)
            replies.append(reply)
            if reply.code >= 400:
                break
        return replies

    async def send(self, sender: str, recipient: str, message: bytes) -> str:
        """One mail transaction; the server's reply to the end of the data."""
        lines = _LINE_ENDINGS.sub(b"\r\n", message)
        if not lines.endswith(b"\r\n"):
            lines += b"\r\n"
        # RFC 1870: the message's own octets, without the dots DATA doubles.
        size = b" SIZE=%d" % len(lines) if self._size else b""
        content = _LEADING_DOT.sub(b"..", lines)
        mail, rcpt = sender.encode("ascii"), recipient.encode("ascii")
        if _LINE_BREAK.search(mail + rcpt):
            raise ValueError("an envelope address holds a line break")
        replies = await self._commands(
            b"MAIL FROM:<%s>%s\r\n" % (mail, size), b"RCPT TO:<%s>\r\n" % rcpt, b"DATA\r\n"
        )
        failure = _refusal(replies, sender, recipient)
        if failure is not None:
            if len(replies) == 3 and replies[2].code == 354:
                # A server that took DATA after refusing the envelope: end an empty message.
                self._write(b".\r\n")
                await self._replies.next(self._timeout)
            await self.reset()
            raise failure
        self._write(content + b".\r\n")
        done = await self._replies.next(self._timeout)
        if done.code != 250:
            raise aiosmtplib.SMTPDataError(done.code, done.message)
        return done.message

    async def reset(self) -> None:
        """End a refused transaction; a session whose RSET fails is not used again."""
        try:
            (reply,) = await self._commands(b"RSET\r\n")
        except (aiosmtplib.SMTPException, TimeoutError):
            reply = None
        if reply is None or reply.code != 250:
            self.close()

    async def quit(self) -> None:
        try:
            await self._commands(b"QUIT\r\n")
        finally:
            self.close()

    def close(self) -> None:
        self._transport.close()


def _refusal(
    replies: list[aiosmtplib.SMTPResponse], sender: str, recipient: str
) -> aiosmtplib.SMTPException | None:
    """What refused the envelope, as aiosmtplib names it; ``None`` when all three were taken."""
    mail = replies[0]
    if mail.code != 250:
        return aiosmtplib.SMTPSenderRefused(mail.code, mail.message, sender)
    rcpt = replies[1] if len(replies) > 1 else None
    if rcpt is not None and rcpt.code not in (250, 251):
        refused = aiosmtplib.SMTPRecipientRefused(rcpt.code, rcpt.message, recipient)
        return aiosmtplib.SMTPRecipientsRefused([refused])
    data = replies[2] if len(replies) > 2 else None
    if data is None or data.code != 354:
        code, text = (data.code, data.message) if data else (-1, "no reply to DATA")
        return aiosmtplib.SMTPDataError(code, text)
    return None


class _Connection:
    def __init__(self) -> None:
        self.session: _Session | None = None
        self.last_used = 0.0


class SmtpChannel:
    """The MAIL channel. ``send`` is safe to call concurrently; at most ``pool_size`` sessions."""

    name = "MAIL"
    provider = PROVIDER

    def __init__(
        self,
        *,
        host: str,
        port: int,
        security: str,
        username: str | None,
        password: str | None,
        from_email: str,
        from_name: str,
        timeout: float,
        pool_size: int,
        ca_file: str | None = None,
        policy: RetryPolicy | None = None,
        max_concurrency: int = 16,
    ) -> None:
        self._host = host
        self._port = port
        self._security = security
        self._username = username
        self._password = password
        self._from_name = from_name
        self._from_email = from_email
        # The envelope's sender: the address alone (``OTP <otp@example.com>`` is allowed), and
        # one that cannot smuggle parameters into MAIL FROM; refused at start, not per mail.
        self._envelope_from = aiosmtplib.email.parse_address(from_email)
        if not self._envelope_from.isascii():
            raise ValueError("the sender address must be ASCII (SMTPUTF8 is not used)")
        self._from_domain = from_email.rpartition("@")[2] or "localhost"
        self._timeout = timeout
        self._ca_file = ca_file
        self._idle: asyncio.LifoQueue[_Connection] = asyncio.LifoQueue()
        self._slots = asyncio.Semaphore(pool_size)
        self._all: list[_Connection] = []
        self.connections_opened = 0
        self.delivery = Delivery(PROVIDER, policy or RetryPolicy(), max_concurrency)

    def check_recipient(self, recipient: str) -> str | None:
        return check_address(recipient)

    def build_message(self, notification: Notification) -> bytes:
        """HTML body with a plain-text alternative, so every mail client shows the code."""
        html = notification.body if notification.text is not None else None
        return build_mail(
            from_name=notification.from_name or self._from_name,
            from_email=notification.from_email or self._from_email,
            to=notification.recipient,
            subject=notification.subject,
            html=html,
            text=notification.text if notification.text is not None else notification.body,
            message_id_domain=self._from_domain,
            attachments=notification.attachments,
            message_key=notification.message_key,
        )

    def _new_client(self) -> aiosmtplib.SMTP:
        tls_context = None
        if self._security != "none":
            tls_context = ssl.create_default_context(cafile=self._ca_file)
        return aiosmtplib.SMTP(
            hostname=self._host,
            port=self._port,
            use_tls=self._security == "tls",
            start_tls=self._security == "starttls",
            username=self._username,
            password=self._password,
            timeout=self._timeout,
            tls_context=tls_context,
        )

    async def _ready(self, conn: _Connection) -> _Session:
        session = conn.session
        if session is not None and not session.usable:
            self._abort(conn)
        elif session is not None and time.monotonic() - conn.last_used > _MAX_IDLE_SECONDS:
            await self._quietly_close(conn)
        if conn.session is None:
            conn.session = await self._open()
        return conn.session

    async def _open(self) -> _Session:
        """A new session: aiosmtplib connects, greets and logs in, then hands it over."""
        client = self._new_client()
        try:
            await client.connect()
            if client.is_ehlo_or_helo_needed:
                try:
                    await client.ehlo()
                except aiosmtplib.SMTPHeloError:
                    await client.helo()  # a server from before ESMTP: no extensions
            session = _Session(client, self._timeout)
        except BaseException:
            client.close()
            raise
        self.connections_opened += 1
        return session

    async def send(self, notification: Notification) -> str | None:
        """Send; the server's reply to DATA (``2.0.0 Ok: queued as 4Bc1x``), which names the
        message in the server's own log."""
        message = self.build_message(notification)

        async def attempt(timeout: float) -> str | None:
            async with self._slots:
                try:
                    conn = self._idle.get_nowait()
                except asyncio.QueueEmpty:
                    conn = _Connection()
                    self._all.append(conn)
                reusable = False
                try:
                    accepted = await self._send_on(conn, notification.recipient, message)
                    reusable = True
                except _RecipientRefused:
                    reusable = True  # the client reset the envelope: the session is fine
                    raise
                finally:
                    if not reusable:
                        # Failed or cancelled mid-conversation (attempt timeout): the session's
                        # state is unknown, so it is dropped, never handed to the next send.
                        self._abort(conn)
                    conn.last_used = time.monotonic()
                    self._idle.put_nowait(conn)
                return accepted

        return await self.delivery.run(attempt)

    async def _send_on(self, conn: _Connection, recipient: str, message: bytes) -> str | None:
        for attempt in (1, 2):
            try:
                session = await self._ready(conn)
                reply = await session.send(self._envelope_from, recipient, message)
                return " ".join(reply.split())[:200] or None
            except aiosmtplib.SMTPServerDisconnected:
                # A kept-open session the server closed meanwhile: reopen once, then give up.
                self._abort(conn)
                if attempt == 2:
                    raise DeliveryError(PROVIDER, "server disconnected", transient=True) from None
            except (aiosmtplib.SMTPException, TimeoutError, OSError) as exc:
                raise self._failure(exc) from None

    def _failure(self, exc: Exception) -> DeliveryError:
        """The delivery error for an SMTP failure: status and whether a retry may help."""
        if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
            codes = sorted({r.code for r in exc.recipients})
            return _RecipientRefused(
                PROVIDER,
                f"recipient refused ({', '.join(map(str, codes))})",
                transient=all(400 <= c < 500 for c in codes),
            )
        if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
            transient = 400 <= exc.code < 500
            return DeliveryError(PROVIDER, f"{exc.code} authentication failed", transient=transient)
        if isinstance(exc, aiosmtplib.SMTPResponseException) and exc.code < 0:
            return DeliveryError(PROVIDER, "malformed server reply")
        if isinstance(exc, aiosmtplib.SMTPResponseException):
            status = f"{exc.code} {_enhanced_status(exc.message)}".strip()
            return DeliveryError(PROVIDER, status, transient=400 <= exc.code < 500)
        if isinstance(exc, aiosmtplib.SMTPTimeoutError | TimeoutError):
            return DeliveryError(PROVIDER, "timeout", transient=True)
        if isinstance(exc, aiosmtplib.SMTPConnectError | OSError):
            cause = exc.__cause__ if isinstance(exc.__cause__, ssl.SSLError) else exc
            if isinstance(cause, ssl.SSLCertVerificationError):
                return DeliveryError(PROVIDER, "TLS certificate verification failed")
            return DeliveryError(
                PROVIDER,
                f"cannot connect to {self._host}:{self._port} ({type(cause).__name__})",
                transient=True,
            )
        return DeliveryError(PROVIDER, type(exc).__name__, transient=True)

    def _abort(self, conn: _Connection) -> None:
        """Drop a session without the QUIT round trip (safe while being cancelled)."""
        if conn.session is not None:
            conn.session.close()
            conn.session = None

    async def _quietly_close(self, conn: _Connection) -> None:
        session, conn.session = conn.session, None
        if session is not None:
            try:
                await asyncio.wait_for(session.quit(), timeout=1.0)
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                session.close()

    async def close(self) -> None:
        for conn in self._all:
            await self._quietly_close(conn)
        self._all.clear()


_ENHANCED_STATUS = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}(?![0-9.])")


def _enhanced_status(text: str) -> str:
    """The RFC 3463 status a reply's text starts with (``5.7.1``), and nothing of the text.

    The text is the server's own, and servers and content filters quote the message back in
    it (``message with Subject '709960 is your code' deferred``): kept, it carried a live code
    into replies, events, tables and logs. The reply code and this status say what happened.
    """
    match = _ENHANCED_STATUS.match((text or "").lstrip())
    return match.group(0) if match else ""
