#!/usr/bin/env python3
"""Development SMTP sink: accept every message, keep it, never deliver it.

The OTP service sends real mail through SMTP. In development and in tests we want that
path exercised end to end (a real SMTP dialogue, real MIME) without any mail leaving the
machine, and we want to look at what would have been sent. This server accepts any
sender and any recipient, writes each message as an ``.eml`` file (openable in any mail
client) and prints a one-line summary, so a developer can watch OTP mails arrive.

It is a single self-contained module on purpose: tests load it with ``importlib`` (or
by putting ``scripts/`` on ``sys.path``) and use :class:`MailCatcher` directly, with
``port=0`` for an ephemeral port, while humans run ``scripts/mail-catcher``.

Configuration (flags win over environment):
    --host / MAIL_CATCHER_HOST   listen address          (default 127.0.0.1)
    --port / MAIL_CATCHER_PORT   listen port, 0 = any    (default 1025)
    --dir  / MAIL_CATCHER_DIR    where .eml files go     (default <repo>/.local/mail)
A relative ``--dir`` is taken from the current directory; a relative MAIL_CATCHER_DIR
(and the default) from the repository root, like ``scripts/kafka-local``'s data dir.
"""

from __future__ import annotations

import argparse
import asyncio
import email
import itertools
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, TextIO

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 1025
DEFAULT_DIR = ".local/mail"
PREFIX = "mail-catcher"


class _DropLoginDataNotice(logging.Filter):
    """aiosmtpd itself sets its deprecated ``Session.login_data`` on every AUTH and logs a
    warning about it; that is noise for us, not a problem anyone can act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "login_data is deprecated" not in record.getMessage()


logging.getLogger("mail.log").addFilter(_DropLoginDataNotice())


@dataclass(frozen=True)
class CaughtMail:
    """One accepted message with its SMTP envelope.

    The envelope matters because it is the truth about delivery: Bcc recipients appear
    only there, and the From header may differ from MAIL FROM.
    """

    mail_from: str
    rcpt_tos: tuple[str, ...]
    message: EmailMessage
    raw: bytes
    path: Path | None
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))


def _accept_any_login(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    """Accept every AUTH attempt.

    A client configured with credentials for a real relay (aiosmtplib logs in whenever a
    username is set) must not fail against the dev sink, so AUTH is offered, over plain
    text, and always succeeds. Nothing is checked: this server must stay on loopback.
    """
    return AuthResult(success=True)


class _Handler:
    """aiosmtpd handler that hands each DATA payload to the owning :class:`MailCatcher`."""

    def __init__(self, catcher: MailCatcher) -> None:
        self._catcher = catcher

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        """Offer PIPELINING (RFC 2920) as production servers do, so that `make run` sends the
        way it will in production; aiosmtpd reads one command line at a time either way."""
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        """Store the message; answering 250 only after it is on disk means a sender that
        got "accepted" can rely on the file being there."""
        try:
            self._catcher._accept(envelope)
        except OSError as exc:  # disk full, permissions: tell the client, do not crash
            return f"451 Requested action aborted: cannot store message ({exc})"
        return "250 Message accepted for delivery"


class MailCatcher:
    """An SMTP server on a background thread that records every message it receives.

    Usable from synchronous and asyncio code alike: the server runs its own event loop in
    its own thread, so a test's loop (or a blocking test) is free to send mail to it.

    ``messages`` holds the parsed :class:`email.message.EmailMessage` objects
    (``email.policy.default``) in arrival order; ``mails`` holds the same with their
    envelopes and file paths. ``directory=None`` keeps messages in memory only.
    """

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        directory: str | os.PathLike[str] | None = None,
        *,
        echo: TextIO | None = None,
        on_message: Callable[[CaughtMail], None] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.directory = Path(directory).resolve() if directory is not None else None
        self.echo = echo
        self.on_message = on_message
        self.mails: list[CaughtMail] = []
        self.messages: list[EmailMessage] = []
        self._counter = itertools.count(1)
        self._cond = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> MailCatcher:
        """Bind and start serving; returns once the socket accepts connections.

        Binding happens before this returns so that errors such as "address in use" are
        raised here, in the caller, rather than lost in the server thread. With
        ``port=0`` the real port is available as ``self.port`` afterwards.
        """
        if self._thread is not None:
            raise RuntimeError("MailCatcher already started")
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    loop.create_server(self._protocol, host=self.host, port=self.port)
                )
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:  # reported to start()'s caller
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name=f"{PREFIX}:{self.port}", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = self._loop = None
            raise failure[0]
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Close the listening socket and open sessions, then end the server thread.

        Idempotent, so test fixtures can call it unconditionally.
        """
        loop, thread, server = self._loop, self._thread, self._server
        if loop is None or thread is None:
            return

        async def shutdown() -> None:
            if server is not None:
                server.close()
                if hasattr(server, "close_clients"):  # Python 3.13+
                    server.close_clients()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            loop.stop()

        if loop.is_running():
            asyncio.run_coroutine_threadsafe(shutdown(), loop)
        thread.join(timeout)
        self._loop = self._server = self._thread = None

    def __enter__(self) -> MailCatcher:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) to give an SMTP client."""
        return self.host, self.port

    # ------------------------------------------------------------------ test helpers

    def clear(self) -> None:
        """Forget received messages (files on disk are left alone)."""
        with self._cond:
            self.mails.clear()
            self.messages.clear()

    def wait_for_messages(self, count: int = 1, timeout: float = 10.0) -> list[EmailMessage]:
        """Block until at least ``count`` messages arrived; raise TimeoutError otherwise.

        For synchronous tests. From a coroutine use :meth:`wait_for`, which does not
        block the event loop that may be the one sending the mail.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.messages) >= count, timeout):
                raise TimeoutError(f"got {len(self.messages)} of {count} messages in {timeout}s")
            return list(self.messages)

    async def wait_for(self, count: int = 1, timeout: float = 10.0) -> list[EmailMessage]:
        """Async variant of :meth:`wait_for_messages` (polls, never blocks the loop)."""
        deadline = time.monotonic() + timeout
        while len(self.messages) < count:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"got {len(self.messages)} of {count} messages in {timeout}s")
            await asyncio.sleep(0.02)
        return list(self.messages)

    # ------------------------------------------------------------------ internals

    def _protocol(self) -> SMTP:
        return SMTP(
            _Handler(self),
            hostname="mail-catcher.local",
            ident="faust-otp mail-catcher",
            enable_SMTPUTF8=True,  # OTP templates may carry non-ASCII addresses
            authenticator=_accept_any_login,
            auth_require_tls=False,
        )

    def _accept(self, envelope: Envelope) -> CaughtMail:
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        message = email.message_from_bytes(raw, policy=default_policy)
        assert isinstance(message, EmailMessage)
        rcpts = tuple(envelope.rcpt_tos)
        path = self._save(envelope.mail_from or "", rcpts, raw) if self.directory else None
        mail = CaughtMail(envelope.mail_from or "", rcpts, message, raw, path)
        with self._cond:
            self.mails.append(mail)
            self.messages.append(message)
            self._cond.notify_all()
        if self.echo is not None:
            subject = message.get("subject", "")
            print(
                f"{PREFIX}: to={','.join(rcpts)} subject={subject} saved={path or '-'}",
                file=self.echo,
                flush=True,
            )
        if self.on_message is not None:
            self.on_message(mail)
        return mail

    def _save(self, mail_from: str, rcpts: tuple[str, ...], raw: bytes) -> Path:
        """Write ``raw`` as an .eml file named by UTC timestamp and a counter.

        The envelope goes in front as X-Envelope-* headers (the way an MTA adds
        Return-Path) because Bcc recipients are otherwise invisible in the file. The
        file is created exclusively so that two catchers sharing a directory can never
        overwrite each other's messages.
        """
        assert self.directory is not None
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        envelope = (
            f"X-Envelope-From: <{mail_from}>\r\nX-Envelope-To: {', '.join(rcpts)}\r\n"
        ).encode("utf-8", "surrogateescape")
        while True:
            path = self.directory / f"{stamp}-{next(self._counter):06d}.eml"
            try:
                with path.open("xb") as fh:
                    fh.write(envelope + raw)
                return path
            except FileExistsError:
                continue


def _resolve_dir(cli_value: str | None) -> Path:
    """CLI paths are relative to the cwd; env/default ones to the repo root."""
    if cli_value:
        return Path(cli_value).expanduser().resolve()
    value = Path(os.environ.get("MAIL_CATCHER_DIR") or DEFAULT_DIR).expanduser()
    return value if value.is_absolute() else (REPO_ROOT / value).resolve()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options, defaulting to the MAIL_CATCHER_* environment variables."""
    parser = argparse.ArgumentParser(
        prog="mail-catcher",
        description="Development SMTP server: stores every message as .eml, delivers none.",
    )
    parser.add_argument("--host", default=os.environ.get("MAIL_CATCHER_HOST") or DEFAULT_HOST)
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("MAIL_CATCHER_PORT") or DEFAULT_PORT)
    )
    parser.add_argument("--dir", dest="directory", default=None, help="default: .local/mail")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run until SIGINT/SIGTERM; exit 0 on either, 1 if the port cannot be bound."""
    args = parse_args(argv)
    directory = _resolve_dir(args.directory)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    catcher = MailCatcher(args.host, args.port, directory, echo=sys.stdout)
    try:
        catcher.start()
    except OSError as exc:
        print(f"{PREFIX}: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    print(f"{PREFIX}: listening on {catcher.host}:{catcher.port}, saving to {directory}")
    sys.stdout.flush()
    try:
        # wait() with a timeout keeps the main thread responsive to signals.
        while not stop.wait(0.5):
            pass
    finally:
        catcher.stop()
    print(f"{PREFIX}: stopped ({len(catcher.messages)} message(s) caught)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
