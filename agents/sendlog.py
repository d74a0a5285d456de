"""The send log's agents: ``log_deliveries`` writes every delivery event into its receiver's row
of ``send_log``; ``answer_log_queries`` answers one partition's share of a query (and sweeps that
partition's old entries) from ``<APP_ID>-log-queries``, whose partitions mirror the table's.
The rules are in ``app.flows.sendlog``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from agents import inbound, survive
from app import codec
from app.records import iso_utc

if TYPE_CHECKING:
    from app.main import Context


def register(ctx: Context) -> None:
    app, topics, send_log = ctx.app, ctx.topics, ctx.send_log
    retention = ctx.settings.send_log_retention_days * 86400

    @app.agent(topics.events, name="log_deliveries")
    async def log_deliveries(stream: Any) -> None:
        async for event in stream.events():
            send_log.record(inbound(event))

    @app.agent(topics.log_queries, name="answer_log_queries")
    async def answer_log_queries(stream: Any) -> None:
        async for event in stream.events():
            await send_log.command(inbound(event))

    @app.timer(interval=ctx.settings.send_log_sweep_interval_seconds, name="sweep_send_log")
    @survive
    async def sweep_send_log() -> None:
        ctx.metrics.send_log_rows.set(len(send_log.rows))
        command = codec.dumps({"k": "x", "cutoff": iso_utc(time.time() - retention)})
        for partition in range(ctx.settings.topic_partitions):
            await topics.log_queries.send(value=command, partition=partition)
