"""Provider callbacks: Twilio's message status reports (``POST /api/callbacks/twilio``).

Twilio cannot send our bearer token, so this route takes none; it checks ``X-Twilio-Signature``
instead, exactly as Twilio documents it (``app.flows.receipts.twilio_signature``), over the URL
Twilio was given (``PUBLIC_BASE_URL`` + the path, + the query string it called with) and the
form parameters. Missing or wrong signature: ``403``; a body over the limit: ``413``; a
``MessageSid`` this service never sent: ``404``; nothing changes in any of them. A verified
report goes to ``message-commands`` keyed by the ``MessageSid``, and the view answers once the
message's owner applied it (``204``), so Twilio retries a report that was not taken.

Twilio can report ``queued`` before the worker that sent the message has registered it (the
registration is produced once Twilio's answer to the send is in, and may come from another
worker's producer). An id the owner does not know yet is therefore asked about again over a
few seconds (:data:`UNKNOWN_RETRY_DELAYS`) before the report is refused as unknown.
"""

from __future__ import annotations

import asyncio
import re
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

import faust
from aiohttp import web

from app.channels.twilio import TWILIO_CALLBACK_PATH
from app.flows.receipts import TWILIO_STATUSES, signature_ok, update_command
from web.errors import ApiError
from web.http import ask, within_read_deadline

if TYPE_CHECKING:
    from app.main import Context

MAX_CALLBACK_BYTES = 16384
# Pauses before asking again about a MessageSid not registered yet (3.75 s in all: well within
# Twilio's 15 s wait for the answer).
UNKNOWN_RETRY_DELAYS = (0.25, 0.5, 1.0, 2.0)
_SID = re.compile(r"(SM|MM)[0-9a-fA-F]{32}")
_ERROR_CODE = re.compile(r"[0-9]{1,10}")


async def _read_at_most(request: web.Request, limit: int) -> bytes:
    """The body up to ``limit`` bytes: one ``read(n)`` returns what has arrived so far, which
    for a body sent in pieces is not the body the signature covers."""
    raw = bytearray()
    while len(raw) < limit:
        chunk = await request.content.read(limit - len(raw))
        if not chunk:
            break
        raw += chunk
    return bytes(raw)


class TwilioCallbacks:
    def __init__(self, ctx: Context) -> None:
        self.settings = ctx.settings
        self.cache = ctx.cache
        self.commands = ctx.topics.message_commands

    def url_of(self, request: web.Request) -> str:
        base = self.settings.public_base_url or ""
        query = f"?{request.query_string}" if request.query_string else ""
        return f"{base}{TWILIO_CALLBACK_PATH}{query}"

    async def params_of(self, request: web.Request) -> list[tuple[str, str]]:
        if request.content_length is not None and request.content_length > MAX_CALLBACK_BYTES:
            raise ApiError(413, f"callback body is over the {MAX_CALLBACK_BYTES}-byte limit")
        raw = await within_read_deadline(_read_at_most(request, MAX_CALLBACK_BYTES + 1))
        if len(raw) > MAX_CALLBACK_BYTES:
            raise ApiError(413, f"callback body is over the {MAX_CALLBACK_BYTES}-byte limit")
        try:
            return parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except (UnicodeDecodeError, ValueError):
            return []

    async def handle(self, request: web.Request) -> web.Response:
        token = self.settings.twilio_auth_token
        if not (token and self.settings.public_base_url):
            raise ApiError(404, "Twilio status callbacks are not enabled on this service")
        params = await self.params_of(request)
        given = request.headers.get("X-Twilio-Signature")
        if not signature_ok(token, self.url_of(request), params, given):
            raise ApiError(403, "missing or wrong X-Twilio-Signature")
        fields = dict(params)
        sid, status = fields.get("MessageSid", ""), fields.get("MessageStatus", "")
        if not _SID.fullmatch(sid):
            raise ApiError(
                400, "invalid callback", [{"field": "MessageSid", "message": "not a message SID"}]
            )
        if status not in TWILIO_STATUSES:
            raise ApiError(
                400, "invalid callback", [{"field": "MessageStatus", "message": "unknown status"}]
            )
        code = fields.get("ErrorCode") or None
        if code is not None and not _ERROR_CODE.fullmatch(code):
            code = None
        return await self.apply(sid, status, code)

    async def apply(self, sid: str, status: str, code: str | None) -> web.Response:
        if not self.cache.ready.is_set():  # its consumer reads the answer: not yet positioned
            raise ApiError(503, "the service is still loading; retry")

        async def send(request_id: str) -> None:
            command = update_command(request_id, status, code)
            await self.commands.send(key=sid.encode(), value=command)

        for delay in (*UNKNOWN_RETRY_DELAYS, None):
            result = await ask(
                self.cache,
                self.settings.api_write_timeout_seconds,
                send,
                "the report could not be applied in time; retry",
            )
            if result["status"] == 204:
                return web.Response(status=204)
            if result["status"] != 404:
                raise ApiError(503, "the report could not be applied; retry")
            if delay is not None:
                await asyncio.sleep(delay)
        raise ApiError(404, "unknown MessageSid")


def register(ctx: Context) -> None:
    app, callbacks = ctx.app, TwilioCallbacks(ctx)

    @app.page(TWILIO_CALLBACK_PATH, name="twilio_callback")
    class TwilioCallback(faust.web.View):
        async def post(self, request: web.Request) -> web.Response:
            return await callbacks.handle(request)
