"""Twilio's Messages API as documented: ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json``.

Checks what Twilio checks before accepting a message: HTTP basic auth with the AccountSid and
auth token (``401``, error 20003), the AccountSid in the path matching the credentials, a
form-encoded body, ``To`` and ``Body`` present, ``From`` or ``MessagingServiceSid`` present
(``400``, errors 21604 / 21602 / 21603), a valid ``To`` (21211). Accepted messages are answered
``201`` with a Message resource (``sid``, ``status: queued`` ...) and kept in ``messages``.

A message created with a ``StatusCallback`` URL gets its status reports the way Twilio sends
them: form-encoded POSTs signed with ``X-Twilio-Signature`` (HMAC-SHA1 of the URL and the sorted
parameters, keyed by the auth token), one status after the other, each sent once the previous
one was answered: ``queued``, ``sent``, ``delivered``; a number ending in ``0099`` ends
``undelivered`` with ``ErrorCode`` 30003 instead. Every answer is kept in ``callbacks``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import secrets
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qs

import aiohttp
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
        self.callbacks: list[tuple[str, str, int]] = []  # (sid, status, HTTP answer)
        self._tasks: set[asyncio.Task[None]] = set()

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
        if form.get("StatusCallback"):
            task = asyncio.get_running_loop().create_task(
                self.report(form["StatusCallback"], message)
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return web.json_response(message, status=201)

    def sign(self, url: str, params: dict[str, str]) -> str:
        """Twilio's signature, written out here from its documentation, not shared with the
        service's code (a test of one against the other)."""
        data = url + "".join(k + params[k] for k in sorted(params))
        digest = hmac.new(self.auth_token.encode(), data.encode(), hashlib.sha1).digest()
        return base64.b64encode(digest).decode()

    async def report(self, url: str, message: dict[str, Any]) -> None:
        final = ("undelivered", "30003") if message["to"].endswith("0099") else ("delivered", "")
        await asyncio.sleep(0.2)  # Twilio reports after its API answered
        async with aiohttp.ClientSession() as session:
            for status, code in (("queued", ""), ("sent", ""), final):
                params = {
                    "AccountSid": self.account_sid,
                    "MessageSid": message["sid"],
                    "SmsSid": message["sid"],
                    "MessageStatus": status,
                    "SmsStatus": status,
                    "To": message["to"],
                    "ApiVersion": "2010-04-01",
                    **({"ErrorCode": code} if code else {}),
                }
                headers = {"X-Twilio-Signature": self.sign(url, params)}
                try:
                    async with session.post(url, data=params, headers=headers) as resp:
                        answer = resp.status
                except aiohttp.ClientError:
                    answer = 0
                with self.lock:
                    self.callbacks.append((message["sid"], status, answer))
