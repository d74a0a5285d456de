"""Liveness and readiness: what scripts, load balancers and orchestrators poll."""

from __future__ import annotations

from typing import Any

import faust
from aiohttp import web

from app.runtime import recovery
from web.errors import json_response


def readiness(ctx: Any) -> dict[str, Any]:
    """Ready = partitions assigned, table recovery finished, template read model caught up."""
    app = ctx.app
    try:
        assigned = len(app.consumer.assignment())
    except Exception:
        assigned = 0
    checks = {
        "partitionsAssigned": assigned > 0,
        "recoveryComplete": recovery.complete(app),
        "templatesLoaded": ctx.cache.ready.is_set(),
    }
    return {"ready": all(checks.values()), "checks": checks, "templates": len(ctx.cache)}


def register(ctx: Any) -> None:
    app = ctx.app

    @app.page("/health", name="health")
    class Health(faust.web.View):
        async def get(self, request: web.Request) -> web.Response:
            return json_response({"status": "ok"})

    @app.page("/ready", name="ready")
    class Ready(faust.web.View):
        async def get(self, request: web.Request) -> web.Response:
            state = readiness(ctx)
            return json_response(state, status=200 if state["ready"] else 503)
