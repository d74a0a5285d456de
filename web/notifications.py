"""``GET /api/notifications``: the send log, queried from any worker (``app.flows.sendlog``).

A query by receiver asks the one partition that receiver hashes to; any other asks every
partition of ``<APP_ID>-log-queries`` and merges their pages, newest first, with a cursor for the
next page. Unknown parameters, bad times, a limit out of range or a cursor this service did not
give out are ``400`` naming the parameter.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import faust
from aiohttp import web

from app import codec
from app.core.access import ADMIN
from app.core.partitions import partition_of
from app.flows import sendlog
from web.errors import ApiError, json_response
from web.http import Gate, ask

if TYPE_CHECKING:
    from app.main import Context


class NotificationLog:
    def __init__(self, ctx: Context) -> None:
        self.settings = ctx.settings
        self.cache = ctx.cache
        self.gate = Gate.of(ctx)
        self.queries = ctx.topics.log_queries

    async def query(self, request: web.Request) -> dict[str, Any]:
        await self.gate.admit(request, ADMIN)
        try:
            query = sendlog.parse_query(request.query)
        except sendlog.QueryError as exc:
            raise ApiError(
                400, "invalid query", [{"field": exc.field, "message": exc.reason}]
            ) from None
        partitions = self.settings.topic_partitions
        asked = (
            [partition_of(query.receiver.encode(), partitions)]
            if query.receiver
            else list(range(partitions))
        )

        def send_to(partition: int) -> Callable[[str], Awaitable[None]]:
            async def send(request_id: str) -> None:
                command = {"k": "q", "id": request_id, "q": query.to_dict()}
                await self.queries.send(value=codec.dumps(command), partition=partition)

            return send

        timeout = self.settings.api_write_timeout_seconds
        unavailable = "the send log did not answer in time; retry"
        results = await asyncio.gather(
            *(ask(self.cache, timeout, send_to(p), unavailable) for p in asked)
        )
        pages = ((r["body"]["items"], r["body"]["more"]) for r in results)
        items, last = sendlog.merge(pages, query.limit)
        return {"items": items, "next": sendlog.encode_cursor(last) if last else None}


def register(ctx: Context) -> None:
    app, log = ctx.app, NotificationLog(ctx)

    @app.page("/api/notifications", name="notification_log")
    class Notifications(faust.web.View):
        async def get(self, request: web.Request) -> web.Response:
            return json_response(await log.query(request))
