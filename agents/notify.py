"""The notification agents: each connects one stream to its handler in ``app.flows.notify``.

``ingest_notifications`` reads the engine's topic, ``send_notifications`` the re-keyed
``notify-commands`` (concurrently across requests: one slow receiver holds up no other
request); the sweep finds rows past ``NOTIFY_REPLAY_SECONDS`` and deletes them through the
stream, since tables change only inside their stream.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agents import dispatch_each, for_each_event, inbound, survive
from app.flows.notify import EXPIRE_COMMAND
from app.flows.receipts import EXPIRE_COMMAND as RECEIPTS_EXPIRE

if TYPE_CHECKING:
    from app.main import Context


def register(ctx: Context) -> None:
    register_notifications(ctx)
    register_receipts(ctx)


def register_notifications(ctx: Context) -> None:
    app, topics, flows = ctx.app, ctx.topics, ctx.notify_flows

    @app.agent(topics.notify_in, name="ingest_notifications")
    async def ingest_notifications(stream: Any) -> None:
        handle = flows.ingest.handle
        await for_each_event(stream, app.consumer.admit, lambda e: handle(inbound(e)))

    @app.agent(topics.notify_commands, name="send_notifications")
    async def send_notifications(stream: Any) -> None:
        await ctx.cache.ready.wait()
        dispatcher = ctx.notify_dispatcher
        await dispatch_each(stream, dispatcher, app.consumer.admit, flows.sender.handle)

    @app.timer(interval=ctx.settings.otp_sweep_interval_seconds, name="sweep_notifications")
    @survive
    async def sweep_notifications() -> None:
        for key in await flows.sender.expired_keys():
            await topics.notify_commands.send(key=key, value=EXPIRE_COMMAND)


def register_receipts(ctx: Context) -> None:
    app, topics, receipts = ctx.app, ctx.topics, ctx.receipts

    @app.agent(topics.message_commands, name="track_receipts")
    async def track_receipts(stream: Any) -> None:
        await for_each_event(stream, app.consumer.admit, lambda e: receipts.handle(inbound(e)))

    @app.timer(interval=ctx.settings.otp_sweep_interval_seconds, name="sweep_receipts")
    @survive
    async def sweep_receipts() -> None:
        for key in await receipts.expired_keys():
            await topics.message_commands.send(key=key, value=RECEIPTS_EXPIRE)
