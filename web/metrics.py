"""``GET /metrics``: this worker's Prometheus metrics (text exposition format)."""

from __future__ import annotations

from typing import Any

import faust
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from web.health import readiness


def refresh_gauges(ctx: Any) -> None:
    """Gauges that describe the present (lag, recovery, readiness) are read at scrape time."""
    metrics, app = ctx.metrics, ctx.app
    state = readiness(ctx)
    metrics.ready.set(1 if state["ready"] else 0)
    metrics.recovering.set(0 if state["checks"]["recoveryComplete"] else 1)
    metrics.templates.set(len(ctx.cache))
    metrics.in_flight.set(ctx.dispatcher.in_flight)
    metrics.lag.clear()
    try:
        consumer = app.consumer
        assignment = consumer.assignment()
    except Exception:  # no consumer yet: no lag to report
        return
    committed = consumer.committed_offsets()
    for tp in assignment:
        try:
            highwater = consumer.highwater(tp)
        except Exception:  # partition not fetched yet
            continue
        if highwater is None:
            continue
        done = committed.get(tp) or 0
        metrics.lag.labels(tp.topic, str(tp.partition)).set(max(0, highwater - done))


def register(ctx: Any) -> None:
    @ctx.app.page("/metrics", name="metrics")
    class Metrics(faust.web.View):
        async def get(self, request: web.Request) -> web.Response:
            refresh_gauges(ctx)
            body = generate_latest(ctx.metrics.registry)
            return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
