"""An SMTP server (aiosmtpd) with TLS and AUTH, and script-able replies to DATA.

``mode="starttls"`` offers STARTTLS and refuses AUTH and mail before it; ``mode="tls"`` speaks
TLS from the first byte (implicit TLS, port 465 style). Either way AUTH (PLAIN/LOGIN) with the
given user and password is required. ``reject*@`` recipients are refused with 550 and
``busy*@`` ones with 452. ``data_script`` holds replies handed out one per DATA
command before the normal ``250`` (e.g. ``"451 4.3.0 try again later"``).
"""

from __future__ import annotations

import email
import email.policy
import threading
from collections import deque
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from devtools.support import OffersPipelining, free_port
from tests.fakes.certs import Certs


class TlsSmtpServer(OffersPipelining):
    def __init__(
        self,
        certs: Certs,
        *,
        mode: str,
        username: str,
        password: str,
        pipelining: bool = True,
    ) -> None:
        assert mode in ("starttls", "tls")
        self.mode = mode
        self.offer_pipelining = pipelining
        self.port = free_port()
        self.username = username
        self.password = password
        self.messages: list[EmailMessage] = []
        self.data_commands = 0
        self.auth_ok: list[bool] = []
        self.tls_sessions: list[bool] = []
        self.data_script: deque[str] = deque()
        self._lock = threading.Lock()
        context = certs.server_context()
        common: dict[str, Any] = {
            "hostname": "127.0.0.1",
            "port": self.port,
            "authenticator": self._authenticate,
            "auth_required": True,
        }
        if mode == "starttls":
            self.controller = Controller(self, tls_context=context, require_starttls=True, **common)
        else:
            # TLS is the transport itself, so aiosmtpd's "AUTH only after STARTTLS" rule is
            # satisfied by construction and switched off.
            self.controller = Controller(
                self, ssl_context=context, auth_require_tls=False, **common
            )

    def _authenticate(
        self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login.decode() == self.username
            and auth_data.password.decode() == self.password
        )
        with self._lock:
            self.auth_ok.append(ok)
            self.tls_sessions.append(session.ssl is not None)
        return AuthResult(success=ok, handled=False)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        """``reject*@`` mailboxes do not exist (550); ``busy*@`` ones are temporarily full (452)."""
        if address.startswith("reject"):
            return "550 5.1.1 mailbox unavailable"
        if address.startswith("busy"):
            return "452 4.2.2 mailbox full"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self._lock:
            self.data_commands += 1
            if self.data_script:
                return self.data_script.popleft()
            message = email.message_from_bytes(envelope.content, policy=email.policy.default)
            self.messages.append(message)  # type: ignore[arg-type]
        return "250 OK"

    def start(self) -> TlsSmtpServer:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def __enter__(self) -> TlsSmtpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
