"""``write_template``: the single writer of the ``templates`` table.

Faust lets a table change only inside the stream of a co-partitioned agent, so the REST views
do not write: they send this agent a command (keyed by ``name:language``, with a request id)
and wait for its answer on the ``template-results`` topic (see ``tables.template_cache``).
Creating, replacing and deleting one key are thereby serialized on one partition, which is what
makes "409 if it exists" and the ``version`` counter race-free across workers.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from agents import for_each_event
from app import codec


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


REQUEST_FIELD = "_request"


def public(template: dict[str, Any] | None) -> dict[str, Any] | None:
    """The template as API clients see it: without the service's private fields."""
    if template is None:
        return None
    return {k: v for k, v in template.items() if not k.startswith("_")}


def apply_command(
    current: dict[str, Any] | None, command: dict[str, Any]
) -> tuple[int, dict[str, Any] | None]:
    """Decide one write: (HTTP status, template to store or None to delete/leave).

    Pure, so the status rules are tested without Kafka. The stored template remembers the id
    of the write that produced it (``_request``): the same command delivered again (at-least-
    once, after a rebalance) is answered as the first time instead of bumping ``version``.
    """
    op = command["op"]
    request_id = command.get("id")
    if current is not None and request_id and current.get(REQUEST_FIELD) == request_id:
        return (201 if op == "create" else 200), current
    if op == "create":
        if current is not None:
            return 409, current
        now = _now()
        return 201, {
            **command["template"],
            "version": 1,
            "createdAt": now,
            "updatedAt": now,
            **({REQUEST_FIELD: request_id} if request_id else {}),
        }
    if op == "replace":
        if current is None:
            return 404, None
        return 200, {
            **command["template"],
            "version": int(current.get("version", 0)) + 1,
            "createdAt": current.get("createdAt"),
            "updatedAt": _now(),
            **({REQUEST_FIELD: request_id} if request_id else {}),
        }
    if op == "delete":
        return (204, None) if current is not None else (404, None)
    raise ValueError(f"unknown template command {op!r}")


def register(ctx: Any) -> dict[str, Any]:
    app, table = ctx.app, ctx.tables.templates

    async def handle(event: Any) -> None:
        command: dict[str, Any] = {}
        try:
            command = codec.loads(event.value)
            key = command["key"].encode()
            stored = table.get(key)
            current = codec.loads(stored) if stored is not None else None
            status, template = apply_command(current, command)
            if status in (200, 201):
                table[key] = codec.dumps(template)
            elif status == 204:
                del table[key]
            result = {"id": command.get("id"), "status": status, "template": public(template)}
        except (KeyError, ValueError, TypeError) as exc:
            result = {"id": command.get("id"), "status": 400, "template": None, "error": str(exc)}
        await ctx.topics.template_results.send(key=event.key, value=codec.dumps(result))

    @app.agent(ctx.topics.template_commands, name="write_template")
    async def write_template(commands: Any) -> None:
        await for_each_event(commands, app.consumer.admit, handle)

    return {"write_template": write_template}
