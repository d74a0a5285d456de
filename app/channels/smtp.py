"""MAIL over SMTP with aiosmtplib: a small pool of kept-open connections.

Opening an SMTP session (TCP, greeting, EHLO, STARTTLS, AUTH) costs several round trips; doing
it once per OTP would dominate the cost of a send. Connections are opened lazily, reused while
the server keeps them, reopened once when it has dropped them, and closed on shutdown.

Each send runs through the shared retry helper (:mod:`app.channels.retry`): SMTP 4xx replies
(greylisting, "try again later"), timeouts and connection failures are retried within
``DELIVERY_TIMEOUT_SECONDS``; 5xx replies (unknown mailbox, rejected) are final.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time

import aiosmtplib

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


def check_address(recipient: str) -> str | None:
    if len(recipient) > 254 or not _ADDRESS.fullmatch(recipient):
        return "recipient must be one e-mail address (user@domain)"
    return None


class _RecipientRefused(DeliveryError):
    """The server refused the address; the session itself stays usable."""


class _Connection:
    def __init__(self, client: aiosmtplib.SMTP) -> None:
        self.client = client
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

    async def _ready(self, conn: _Connection) -> None:
        idle_too_long = time.monotonic() - conn.last_used > _MAX_IDLE_SECONDS
        if conn.client.is_connected and idle_too_long:
            await self._quietly_close(conn)
        if not conn.client.is_connected:
            await conn.client.connect()
            self.connections_opened += 1

    async def send(self, notification: Notification) -> str | None:
        """Send; the server's reply to DATA (``2.0.0 Ok: queued as 4Bc1x``), which names the
        message in the server's own log."""
        message = self.build_message(notification)

        async def attempt(timeout: float) -> str | None:
            async with self._slots:
                try:
                    conn = self._idle.get_nowait()
                except asyncio.QueueEmpty:
                    conn = _Connection(self._new_client())
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
                await self._ready(conn)
                _, reply = await conn.client.sendmail(self._from_email, [recipient], message)
                return " ".join(str(reply).split())[:200] or None
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
        if conn.client.is_connected:
            conn.client.close()
        conn.client = self._new_client()

    async def _quietly_close(self, conn: _Connection) -> None:
        client = conn.client
        if client.is_connected:
            try:
                await asyncio.wait_for(client.quit(), timeout=1.0)
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                client.close()
        conn.client = self._new_client()

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
