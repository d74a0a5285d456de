"""The template writer: the single writer of the ``templates`` table (pure rules, plain class).

Faust lets a table change only inside the stream of a co-partitioned agent, so the REST views
do not write: they send the ``write_template`` agent a command (keyed by ``name:language``, with
a request id) and wait for its answer on the ``template-results`` topic (see
``tables.template_cache``). Creating, replacing and deleting one key are thereby serialized on
one partition, which is what makes "409 if it exists" and the ``version`` counter race-free
across workers.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from datetime import UTC, datetime
from typing import Any

from app import codec
from app.flows import Inbound, Outbox, Route


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


class TemplateWriter:
    """Applies one write command to the ``templates`` rows and publishes its result."""

    def __init__(self, rows: MutableMapping[bytes, bytes], outbox: Outbox) -> None:
        self.rows = rows
        self.outbox = outbox

    async def handle(self, record: Inbound) -> None:
        command: dict[str, Any] = {}
        try:
            command = codec.loads(record.value or b"")
            key = command["key"].encode()
            stored = self.rows.get(key)
            current = codec.loads(stored) if stored is not None else None
            status, template = apply_command(current, command)
            if status in (200, 201):
                self.rows[key] = codec.dumps(template)
            elif status == 204:
                del self.rows[key]
            result = {"id": command.get("id"), "status": status, "template": public(template)}
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            result = {"id": command.get("id"), "status": 400, "template": None, "error": str(exc)}
        await self.outbox.send(Route.TEMPLATE_RESULTS, record.key, codec.dumps(result), [])
