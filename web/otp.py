"""OTP status API: an identifier's current code as an operator may see it, and cancelling it.

The ``otps`` row lives on one partition, owned by one worker, and changes only inside its
stream; so a view on any worker sends a status or cancel command to ``otp-commands`` keyed by
the ``clientId`` (in order with that identifier's generates and validates) and waits for the
owner's answer on the results topic, as template writes do. Never the code, the HMAC or the
receiver in clear.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import faust
from aiohttp import web

from app import codec
from app.core.access import ADMIN
from app.flows.otp import CANCEL, STATUS
from app.records import RequestError, identifier
from web.errors import ApiError, json_response
from web.http import Gate, ask

if TYPE_CHECKING:
    from app.main import Context


class OtpApi:
    def __init__(self, ctx: Context) -> None:
        self.settings = ctx.settings
        self.cache = ctx.cache
        self.gate = Gate.of(ctx)
        self.commands = ctx.topics.otp_commands

    async def ask(self, request: web.Request, client_id: str, kind: str) -> web.Response:
        await self.gate.admit(request, ADMIN)
        try:
            key = str(identifier(client_id, "clientId", None))
        except RequestError as exc:
            details = [{"field": "clientId", "message": exc.reason}]
            raise ApiError(400, "invalid clientId", details) from None

        async def send(request_id: str) -> None:
            command = codec.dumps({"k": kind, "id": request_id})
            await self.commands.send(key=key.encode(), value=command)

        result = await ask(
            self.cache,
            self.settings.api_write_timeout_seconds,
            send,
            "the OTP store did not answer in time; retry",
        )
        if result["status"] == 404:
            raise ApiError(404, f"no code was generated for clientId '{key}'")
        if result["status"] == 409:
            status = result["body"]["status"]
            raise ApiError(409, f"the code is {status}: only a pending code can be canceled")
        return json_response(result["body"])


def register(ctx: Context) -> None:
    app, api = ctx.app, OtpApi(ctx)

    @app.page("/api/otp/{client_id}", name="otp_status")
    class OtpStatus(faust.web.View):
        async def get(self, request: web.Request, client_id: str) -> web.Response:
            return await api.ask(request, client_id, STATUS)

    @app.page("/api/otp/{client_id}/cancel", name="otp_cancel")
    class OtpCancel(faust.web.View):
        async def post(self, request: web.Request, client_id: str) -> web.Response:
            return await api.ask(request, client_id, CANCEL)
