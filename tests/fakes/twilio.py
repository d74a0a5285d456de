"""Twilio's Messages API as documented: ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json``.

Checks what Twilio checks before accepting a message: HTTP basic auth with the AccountSid and
auth token (``401``, error 20003), the AccountSid in the path matching the credentials, a
form-encoded body, ``To`` and ``Body`` present, ``From`` or ``MessagingServiceSid`` present
(``400``, errors 21604 / 21602 / 21603), a valid ``To`` (21211). Accepted messages are answered
``201`` with a Message resource (``sid``, ``status: queued`` ...) and kept in ``messages``.
"""

from __future__ import annotations

import base64
import re
import secrets
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qs

from aiohttp import web

from tests.fakes.server import FakeServer, Script


def twilio_error(status: int, code: int, message: str) -> web.Response:
    body = {
        "code": code,
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }
    return web.json_response(body, status=status)


class TwilioFake(FakeServer):
    def __init__(self, account_sid: str | None = None, auth_token: str | None = None) -> None:
        super().__init__()
        self.account_sid = account_sid or "AC" + secrets.token_hex(16)
        self.auth_token = auth_token or secrets.token_hex(16)
        self.script = Script()
        self.messages: list[dict[str, Any]] = []

    def setup(self, app: web.Application) -> None:
        app.router.add_post("/2010-04-01/Accounts/{sid}/Messages.json", self.create_message)

    def to(self, number: str) -> list[dict[str, Any]]:
        with self.lock:
            return [m for m in self.messages if m["to"] == number]

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return user == self.account_sid and password == self.auth_token

    async def create_message(self, request: web.Request) -> web.Response:
        seen = await self.record(request)
        scripted = await self.scripted(self.script)
        if scripted is not None:
            return scripted
        if not self._authorized(request):
            return twilio_error(401, 20003, "Authenticate")
        if request.match_info["sid"] != self.account_sid:
            return twilio_error(404, 20404, "The requested resource was not found")
        if seen.content_type != "application/x-www-form-urlencoded":
            return twilio_error(
                400, 21000, "Content-Type must be application/x-www-form-urlencoded"
            )
        form = {k: v[-1] for k, v in parse_qs(seen.body.decode(), keep_blank_values=True).items()}
        to, body = form.get("To", ""), form.get("Body", "")
        sender, service = form.get("From", ""), form.get("MessagingServiceSid", "")
        if not to:
            return twilio_error(400, 21604, "A 'To' phone number is required.")
        if not body:
            return twilio_error(400, 21602, "Message body is required.")
        if not (sender or service):
            return twilio_error(
                400, 21603, "A 'From' or 'MessagingServiceSid' parameter is required."
            )
        if not re.fullmatch(r"\+[1-9][0-9]{7,14}", to) or to.startswith("+1555"):
            return twilio_error(400, 21211, f"Invalid 'To' Phone Number: {to}")
        now = formatdate(usegmt=True)
        sid = "SM" + secrets.token_hex(16)
        message = {
            "sid": sid,
            "account_sid": self.account_sid,
            "to": to,
            "from": sender or None,
            "messaging_service_sid": service or None,
            "body": body,
            "status": "accepted" if service else "queued",
            "num_segments": "1",
            "direction": "outbound-api",
            "api_version": "2010-04-01",
            "date_created": now,
            "date_updated": now,
            "date_sent": None,
            "price": None,
            "error_code": None,
            "error_message": None,
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}.json",
        }
        with self.lock:
            self.messages.append(message)
        return web.json_response(message, status=201)
