"""The template writer: the single writer of the ``templates`` table (pure rules, plain class).

Faust lets a table change only inside the stream of a co-partitioned agent, so the REST views
do not write: they send the ``write_template`` agent a command (keyed by ``name:language``, with
a request id) and wait for its answer on the ``template-results`` topic (see
``tables.template_cache``). Every change to one key is thereby serialized on one partition,
which is what makes "409 if it exists", the ``version`` counter and the history race-free
across workers.

One row holds a template's whole life: the published version (its public fields, which sends
use), an unpublished ``_draft``, the ``_history`` of earlier published versions and the
``_change`` (who, what) that made the current one. History reads go through the writer too,
so they are as current as the writes; the read model on every worker keeps only the published
version and the draft.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from app import codec
from app.core.templates import MAX_CONTEXT_DEPTH, check_fields, template_key
from app.flows import BoundedRows, Inbound, Outbox, Route

#: The one request id rows written before ``_requests`` existed remember (read, never written).
REQUEST_FIELD = "_request"
#: The ids of the row's last writes: a command redelivered after a crash or a rebalance (every
#: one since the last committed offset comes back) is answered, not applied again.
REQUESTS_FIELD = "_requests"
RECENT_REQUESTS = 64
DRAFT_FIELD = "_draft"
HISTORY_FIELD = "_history"
CHANGE_FIELD = "_change"
#: Counts every write to a row, drafts included (which leave ``version`` as it is), so a read
#: model that sees the row's records out of order keeps the newest.
REVISION_FIELD = "_rev"
#: The fields a version's content is made of (what a summary compares, what restore copies).
CONTENT_FIELDS = (
    "type",
    "subject",
    "body",
    "params",
    "context",
    "active",
    "strategyType",
    "forwardOnKafka",
)
SERVER_FIELDS = ("version", "createdAt", "updatedAt")
#: What a replayed command answers (the status it had the first time).
WRITE_STATUS = {
    "create": 201,
    "replace": 200,
    "save_draft": 200,
    "discard_draft": 204,
    "publish": 200,
    "restore": 200,
}
READ_OPS = ("versions", "version")
#: The commands that carry a template to store (checked again by the writer).
TEMPLATE_OPS = ("create", "replace", "save_draft")


@dataclass(frozen=True)
class HistoryLimits:
    """How much history one row keeps: at most ``versions`` earlier versions, and no more than
    fits a changelog record of ``max_record_bytes`` (the producer refuses larger ones)."""

    versions: int = 50
    max_record_bytes: int = 900_000


DEFAULT_LIMITS = HistoryLimits()
# A template's context may nest MAX_CONTEXT_DEPTH levels; a command wraps it in a few more. A
# row nested near orjson's limit would be stored, and every answer about it fail to serialise.
MAX_COMMAND_DEPTH = MAX_CONTEXT_DEPTH + 8


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def public(template: dict[str, Any] | None) -> dict[str, Any] | None:
    """The template as API clients see it: without the service's private fields."""
    if template is None:
        return None
    return {k: v for k, v in template.items() if not k.startswith("_")}


def content(template: dict[str, Any]) -> dict[str, Any]:
    """What a template is, without what the server adds (version, times, private fields):
    what restore copies, clone and export take, and import compares."""
    return {k: template[k] for k in ("name", "language", *CONTENT_FIELDS) if k in template}


def summary(before: dict[str, Any] | None, after: dict[str, Any]) -> str:
    """Which content fields a change touched, in a few words ("body, subject changed")."""
    if before is None:
        return "created"
    changed = [f for f in CONTENT_FIELDS if before.get(f) != after.get(f)]
    return f"{', '.join(changed)} changed" if changed else "no content change"


def _version_entry(record: dict[str, Any]) -> dict[str, Any]:
    """A published version as the history keeps it: public fields plus who changed it."""
    return {**(public(record) or {}), CHANGE_FIELD: record.get(CHANGE_FIELD, {})}


def _bounded(record: dict[str, Any], limits: HistoryLimits) -> dict[str, Any]:
    """Drop the oldest history entries until the row fits both limits."""
    if HISTORY_FIELD not in record:
        return record
    history = record[HISTORY_FIELD][-limits.versions :] if limits.versions else []
    record = {**record, HISTORY_FIELD: history}
    while history and len(codec.dumps(record)) > limits.max_record_bytes:
        history = history[1:]
        record = {**record, HISTORY_FIELD: history}
    return record


def _published(
    current: dict[str, Any] | None,
    content: dict[str, Any],
    command: dict[str, Any],
    what: str,
) -> dict[str, Any]:
    """A new published version made of ``content``, the current one moved into the history."""
    now = _now()
    change = {"by": command.get("by"), "summary": what}
    if current is None:
        return {
            **content,
            "version": 1,
            "createdAt": now,
            "updatedAt": now,
            CHANGE_FIELD: change,
        }
    record = {
        **content,
        "version": int(current.get("version", 0)) + 1,
        "createdAt": current.get("createdAt"),
        "updatedAt": now,
        CHANGE_FIELD: change,
        HISTORY_FIELD: [*current.get(HISTORY_FIELD, []), _version_entry(current)],
        **({DRAFT_FIELD: current[DRAFT_FIELD]} if DRAFT_FIELD in current else {}),
    }
    return record


def apply_command(
    current: dict[str, Any] | None,
    command: dict[str, Any],
    limits: HistoryLimits = DEFAULT_LIMITS,
) -> tuple[int, dict[str, Any] | None]:
    """Decide one command: (HTTP status, row to store, or None to delete/leave).

    Pure, so the status rules are tested without Kafka. Every write records its request id in
    the row (``_requests``, the last ``RECENT_REQUESTS``): the same command delivered again
    (at-least-once, after a rebalance) is answered as the first time instead of applied again.
    """
    op = command["op"]
    request_id = command.get("id")
    if op in READ_OPS:
        return (200 if current is not None else 404), current
    if current is not None and request_id and request_id in seen_requests(current):
        return WRITE_STATUS.get(op, 200), current
    if op == "create":
        if current is not None:
            return 409, current
        what = command.get("summary") or "created"
        status, row = 201, _published(None, command["template"], command, what)
    elif current is None:
        if op in WRITE_STATUS or op == "delete":
            return 404, None
        raise ValueError(f"unknown template command {op!r}")
    else:
        status, row = _change(current, command)
    # After the write's own answer: a precondition counts only where that is a success.
    if 200 <= status < 300 and not precondition_holds(current, command):
        return 412, current
    if row is not None and row is not current:
        row = {**row, REVISION_FIELD: revision(current) + 1}
        if request_id:
            recent = [*seen_requests(current), request_id][-RECENT_REQUESTS:]
            row = {**row, REQUESTS_FIELD: recent}
        row = _bounded(row, limits)  # last: the size counts every field the row is written with
    return status, row


def etag(created_at: Any, rev: int) -> str:
    """The strong ETag of a template's row: its revision counts every write, drafts included,
    and its creation time tells a template re-created after a delete (whose revisions count
    from 1 again) from the one before it."""
    stamp = "".join(ch for ch in str(created_at or "") if ch.isdigit())
    return f'"{rev}-{stamp}"'


def row_etag(row: dict[str, Any]) -> str:
    return etag(row.get("createdAt"), revision(row))


def precondition_holds(current: dict[str, Any] | None, command: dict[str, Any]) -> bool:
    """A write's ``If-Match`` (``ifMatch``: ``"*"`` or the ETags it was read with) against the
    row: an editor's change, a draft saved included, never overwrites one made since it read
    the template (RFC 9110 13.1.1). Without one every write goes ahead. Asked only of a
    write that would succeed: otherwise its own answer (404, 409) stands, as RFC 9110 13.2.1
    orders."""
    wanted = command.get("ifMatch")
    if wanted is None or wanted == "*" or current is None or command["op"] == "create":
        return True
    if not isinstance(wanted, list):
        raise ValueError("ifMatch must be '*' or a list of ETags")
    return row_etag(current) in wanted


def seen_requests(row: dict[str, Any] | None) -> list[str]:
    if row is None:
        return []
    recent = list(row.get(REQUESTS_FIELD, []))
    last = row.get(REQUEST_FIELD)
    return recent if last is None or last in recent else [*recent, last]


def revision(row: dict[str, Any] | None) -> int:
    return int(row.get(REVISION_FIELD, 0)) if row is not None else 0


def _change(current: dict[str, Any], command: dict[str, Any]) -> tuple[int, dict[str, Any] | None]:
    """A command on an existing row (``apply_command`` without the row-independent rules)."""
    op = command["op"]
    if op == "replace":
        template = command["template"]
        what = command.get("summary") or summary(current, template)
        return 200, _published(current, template, command, what)
    if op == "delete":
        return 204, None
    if op == "save_draft":
        draft = {
            **command["template"],
            "savedAt": _now(),
            "savedBy": command.get("by"),
            "baseVersion": int(current.get("version", 0)),
        }
        return 200, {**current, DRAFT_FIELD: draft}
    if op == "discard_draft":
        if DRAFT_FIELD not in current:
            return 404, current
        return 204, {k: v for k, v in current.items() if k != DRAFT_FIELD}
    if op == "publish":
        draft = current.get(DRAFT_FIELD)
        if draft is None:
            return 409, current
        what = f"published draft: {summary(current, draft)}"
        record = _published(current, content(draft), command, what)
        return 200, {k: v for k, v in record.items() if k != DRAFT_FIELD}
    if op == "restore":
        old = version_of(current, int(command["version"]))
        if old is None:
            return 404, current
        what = f"restored version {old['version']}"
        return 200, _published(current, content(old), command, what)
    raise ValueError(f"unknown template command {op!r}")


def version_of(record: dict[str, Any], version: int) -> dict[str, Any] | None:
    """Published version ``version`` of the row (the current one or one in the history)."""
    if int(record.get("version", 0)) == version:
        return _version_entry(record)
    for entry in record.get(HISTORY_FIELD, []):
        if int(entry.get("version", 0)) == version:
            return entry
    return None


def version_view(entry: dict[str, Any], current_version: int) -> dict[str, Any]:
    """A history entry as the API shows it: the template, who changed it and how."""
    change = entry.get(CHANGE_FIELD) or {}
    return {
        **(public(entry) or {}),
        "changedBy": change.get("by"),
        "summary": change.get("summary"),
        "current": int(entry.get("version", 0)) == current_version,
    }


def versions(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Every kept version, newest first, without its content (the list view)."""
    current = int(record.get("version", 0))
    entries = [*record.get(HISTORY_FIELD, []), _version_entry(record)]
    return [
        {k: v for k, v in version_view(e, current).items() if k in LISTED}
        for e in reversed(entries)
    ]


LISTED = ("version", "updatedAt", "changedBy", "summary", "current")


def answer(status: int, record: dict[str, Any] | None, command: dict[str, Any]) -> dict[str, Any]:
    """The result a view waits for: the published template and the draft (which the asking
    view applies to its read model at once), and what the API answers (``body``)."""
    op = command["op"]
    result: dict[str, Any] = {
        "id": command.get("id"),
        "status": status,
        "template": public(record),
        "draft": record.get(DRAFT_FIELD) if record is not None else None,
        "rev": revision(record),
    }
    if record is None or status >= 400:
        return result
    if op == "versions":
        result["body"] = {"items": versions(record)}
    elif op == "version":
        found = version_of(record, int(command["version"]))
        result["body"] = version_view(found, int(record["version"])) if found else None
        result["status"] = 200 if found else 404
    elif op == "save_draft":
        result["body"] = record.get(DRAFT_FIELD)
    return result


class TemplateWriter:
    """Applies one command to the ``templates`` rows and publishes its result.

    A template in a command has passed the API's checks, unless the record was not written by
    this service: the writer checks its fields again (cheap, linear in its size), so a forged
    record cannot store a body over the size limit, or under another template's key, that
    every worker's read model would then compile.
    """

    def __init__(
        self,
        rows: MutableMapping[bytes, bytes],
        outbox: Outbox,
        limits: HistoryLimits = DEFAULT_LIMITS,
        *,
        default_language: str,
        max_body_chars: int,
    ) -> None:
        self.rows = BoundedRows(rows)
        self.outbox = outbox
        self.limits = limits
        self.default_language = default_language
        self.max_body_chars = max_body_chars

    def checked(self, command: dict[str, Any]) -> dict[str, Any]:
        """The command with its template checked as the API checks one; raises ValueError."""
        if command["op"] not in TEMPLATE_OPS:
            return command
        template = check_fields(
            command["template"],
            default_language=self.default_language,
            max_body_chars=self.max_body_chars,
        )
        if template_key(template["name"], template["language"]) != command["key"]:
            raise ValueError("the template's name and language do not make the command's key")
        return {**command, "template": template}

    async def handle(self, record: Inbound) -> None:
        command: dict[str, Any] = {}
        try:
            command = codec.loads_object(record.value or b"")
            if codec.depth(command) > MAX_COMMAND_DEPTH:
                raise ValueError(f"command is nested deeper than {MAX_COMMAND_DEPTH} levels")
            command = self.checked(command)
            key = command["key"].encode()
            stored = self.rows.get(key)
            current = codec.loads(stored) if stored is not None else None
            status, row = apply_command(current, command, self.limits)
            if command["op"] not in READ_OPS and row is not current:
                if row is None:
                    if current is not None:
                        del self.rows[key]
                else:
                    self.rows[key] = codec.dumps(row)
            value = codec.dumps(answer(status, row, command))
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            request_id = command.get("id")
            result = {
                "id": request_id if isinstance(request_id, str) else None,
                "status": 400,
                "template": None,
                "error": str(exc)[:500],
            }
            value = codec.dumps(result)
        await self.outbox.send(Route.TEMPLATE_RESULTS, record.key, value, [])
