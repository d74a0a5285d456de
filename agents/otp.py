"""The OTP agents: each connects one stream to its handler in ``app.flows.otp``.

``ingest_generate`` / ``ingest_validate`` read the engine's topics, ``count_receivers`` the
receiver-keyed hop, ``process_otp`` the ``otp-commands`` topic (concurrently across
identifiers, in order per identifier); the sweeps find expired rows on the owner's partitions
and delete them through the stream, since tables change only inside their stream.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agents import dispatch_each, for_each_event, inbound, survive
from app.flows.otp import EXPIRE_COMMAND

if TYPE_CHECKING:
    from app.main import Context


def register(ctx: Context) -> None:
    register_ingest(ctx)
    register_processing(ctx)
    register_sweeps(ctx)


def register_ingest(ctx: Context) -> None:
    app, topics, flows = ctx.app, ctx.topics, ctx.flows

    async def ingest(stream: Any, handler: Any) -> None:
        await ctx.cache.ready.wait()  # the receiver check reads templates
        await for_each_event(stream, app.consumer.admit, lambda e: handler.handle(inbound(e)))

    @app.agent(topics.generate_in, name="ingest_generate")
    async def ingest_generate(stream: Any) -> None:
        await ingest(stream, flows.ingest_generate)

    @app.agent(topics.validate_in, name="ingest_validate")
    async def ingest_validate(stream: Any) -> None:
        await ingest(stream, flows.ingest_validate)


def register_processing(ctx: Context) -> None:
    app, topics, flows = ctx.app, ctx.topics, ctx.flows

    @app.agent(topics.receiver_commands, name="count_receivers")
    async def count_receivers(stream: Any) -> None:
        handle = flows.receivers.handle
        await for_each_event(stream, app.consumer.admit, lambda e: handle(inbound(e)))

    @app.agent(topics.otp_commands, name="process_otp")
    async def process_otp(stream: Any) -> None:
        await ctx.cache.ready.wait()
        await dispatch_each(stream, ctx.dispatcher, app.consumer.admit, flows.processor.handle)


def register_sweeps(ctx: Context) -> None:
    app, topics, flows = ctx.app, ctx.topics, ctx.flows
    interval = ctx.settings.otp_sweep_interval_seconds

    @app.timer(interval=interval, name="sweep_expired_otps")
    @survive
    async def sweep_expired_otps() -> None:
        for key in await flows.processor.expired_keys():
            await topics.otp_commands.send(key=key, value=EXPIRE_COMMAND)

    @app.timer(interval=interval, name="sweep_receivers")
    @survive
    async def sweep_receivers() -> None:
        for key in await flows.receivers.expired_keys():
            await topics.receiver_commands.send(key=key, value=EXPIRE_COMMAND)
