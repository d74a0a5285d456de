"""HTTP views: template API, OpenAPI document, health and readiness."""

from __future__ import annotations

from typing import Any


def register_views(ctx: Any) -> None:
    from web import (
        callbacks,
        console,
        health,
        metrics,
        notifications,
        openapi,
        otp,
        template_io,
        templates,
    )

    health.register(ctx)
    template_io.register(ctx, templates.register(ctx))
    otp.register(ctx)
    callbacks.register(ctx)
    notifications.register(ctx)
    openapi.register(ctx)
    metrics.register(ctx)
    console.register(ctx)
