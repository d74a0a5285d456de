"""``write_template``: connects the template commands to ``app.flows.templates``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agents import for_each_event, inbound
from app.flows.templates import HistoryLimits, TemplateWriter, apply_command, public

if TYPE_CHECKING:
    from app.main import Context

__all__ = ["apply_command", "public", "register"]


def register(ctx: Context) -> None:
    app = ctx.app
    limits = HistoryLimits(versions=ctx.settings.template_history_versions)
    writer = TemplateWriter(
        ctx.tables.templates,
        ctx.outbox,
        limits,
        default_language=ctx.settings.template_default_language,
        max_body_chars=ctx.settings.template_max_body_chars,
    )

    @app.agent(ctx.topics.template_commands, name="write_template")
    async def write_template(commands: Any) -> None:
        await for_each_event(commands, app.consumer.admit, lambda e: writer.handle(inbound(e)))
