"""The send log: what was sent, to whom, and what became of it, built from the delivery events.

Design (README, "The send log"): the ``send_log`` table is keyed by receiver, as the events
topic is, so the agent that reads the events writes each one into its own partition's row:
``{"entries": {entryId: entry}}``, an entry being one send (an OTP code, one receiver of a
notification) with its events in order and its latest status. A query by receiver goes to the
one partition that receiver hashes to; any other query goes to every partition, each answering
with its newest matches (scatter-gather over ``<APP_ID>-log-queries``, see
``agents/sendlog.py``), and the asking view merges the pages. Pure: no Faust, no Kafka.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import logging
import re
import time
from collections.abc import AsyncIterator, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from datetime import time as clock_time
from typing import Any

from app import codec
from app.flows import BoundedRows, Clock, Inbound, Outbox, Route, Scan
from app.metrics import Metrics
from app.records import iso_utc

log = logging.getLogger(__name__)

# Bounds that keep a row, and an answer, well inside a Kafka record.
MAX_ENTRIES_PER_RECEIVER = 200
MAX_EVENTS_PER_ENTRY = 50
# Ours are a few hundred bytes; with these, a row stays far below what a changelog record holds
# (at 200 entries of 50 events each, it would not).
MAX_EVENT_BYTES = 4096
MAX_LOG_ROW_BYTES = 256 * 1024
DEFAULT_LIMIT, MAX_LIMIT = 50, 500
FILTERS = ("receiver", "clientId", "processInstanceId", "templateName", "channel")
PARAMS = frozenset({*FILTERS, "since", "until", "limit", "cursor"})
_STATUS = {
    "otp.sent": "sent",
    "otp.send_refused": "refused",
    "otp.validated": "validated",
    "otp.attempt_failed": "attempt_failed",
    "otp.locked": "locked",
    "otp.expired": "expired",
    "notification.sent": "sent",
    "notification.failed": "failed",
    "notification.forwarded": "forwarded",
}
# What every delivery event of ours carries, as text; ``at`` is compared as ISO text.
_EVENT_KEYS = ("entryId", "receiver", "eventId", "type", "at")
_ENTRY_FIELDS = ("clientId", "identifier", "processInstanceId", "templateName", "language")


class QueryError(ValueError):
    """A query the log cannot answer; ``field`` names the parameter at fault."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def apply(row: dict[str, Any] | None, event: dict[str, Any]) -> dict[str, Any] | None:
    """``row`` with ``event`` joined to its entry; None when the event belongs to no send (a
    validate for an identifier that has no code). A redelivered event is recorded once."""
    if not all(isinstance(event.get(name), str) and event[name] for name in _EVENT_KEYS):
        return None  # not one of ours (a validate of no code, or a record written by hand)
    entry_id, receiver = event["entryId"], event["receiver"]
    entries = dict((row or {}).get("entries", {}))
    entry = entries.get(entry_id) or {
        "id": entry_id,
        "receiver": receiver,
        "channel": event.get("channel"),
        "at": event["at"],
        "events": [],
    }
    if any(e["eventId"] == event["eventId"] for e in entry["events"]):
        return None
    for name in _ENTRY_FIELDS:
        if entry.get(name) is None and event.get(name) is not None:
            entry[name] = event[name]
    entry["events"] = [*entry["events"], event][-MAX_EVENTS_PER_ENTRY:]
    entry["status"] = _STATUS.get(event["type"], event.get("status"))
    entry["last"] = event["at"]
    entries[entry_id] = entry
    if len(entries) > MAX_ENTRIES_PER_RECEIVER:
        entries = _newest(entries, MAX_ENTRIES_PER_RECEIVER)
    return {"entries": entries}


def _newest(entries: dict[str, Any], count: int) -> dict[str, Any]:
    """The ``count`` entries touched last."""
    newest = sorted(entries.values(), key=lambda e: e["last"])[-count:]
    return {e["id"]: e for e in newest}


def fit(row: dict[str, Any]) -> bytes:
    """``row`` encoded in at most ``MAX_LOG_ROW_BYTES``, its least recently touched entries
    dropped as needed: a receiver sent to all day long keeps its newest sends."""
    value = codec.dumps(row)
    entries = row["entries"]
    while len(value) > MAX_LOG_ROW_BYTES and len(entries) > 1:
        entries = _newest(entries, len(entries) - (len(entries) // 4 or 1))
        value = codec.dumps({"entries": entries})
    return value


def sweep(row: dict[str, Any], cutoff: str) -> dict[str, Any] | None:
    """``row`` without the entries last touched before ``cutoff`` (ISO); None when none are
    left, so the caller deletes the row (a tombstone on the changelog)."""
    kept = {k: e for k, e in row.get("entries", {}).items() if e["last"] >= cutoff}
    return {"entries": kept} if kept else None


@dataclass(frozen=True)
class Query:
    """A parsed ``GET /api/notifications``: equality filters, a time range, a page."""

    filters: tuple[tuple[str, str], ...] = ()
    since: str | None = None
    until: str | None = None
    limit: int = DEFAULT_LIMIT
    cursor: tuple[str, str] | None = None

    @property
    def receiver(self) -> str | None:
        return dict(self.filters).get("receiver")

    def to_dict(self) -> dict[str, Any]:
        return {
            "filters": [list(f) for f in self.filters],
            "since": self.since,
            "until": self.until,
            "limit": self.limit,
            "cursor": list(self.cursor) if self.cursor else None,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Query:
        """A query off ``log-queries``, held to the rules :func:`parse_query` holds a URL to:
        anyone who can produce to the topic can write one, and ten thousand filters over a
        receiver's row held the partition's stream for half a second."""
        if not isinstance(data, dict):
            raise QueryError("q", "is not a query")
        filters = data.get("filters") or []
        if not isinstance(filters, list) or len(filters) > len(FILTERS):
            raise QueryError("filters", f"must be at most {len(FILTERS)} filters")
        checked: dict[str, str] = {}
        for item in filters:
            name, value = item if isinstance(item, list) and len(item) == 2 else (None, None)
            if name not in FILTERS or name in checked:
                raise QueryError("filters", f"must name each of {', '.join(FILTERS)} once")
            checked[name] = _filter_value(name, value)
        limit = data.get("limit", DEFAULT_LIMIT)
        if type(limit) is not int:
            raise QueryError("limit", LIMIT_RULE)
        since, until, cursor = data.get("since"), data.get("until"), data.get("cursor")
        return cls(
            filters=tuple(checked.items()),
            since=None if since is None else _instant("since", _text("since", since)),
            until=None if until is None else _instant("until", _text("until", until)),
            limit=_limit(limit),
            cursor=None if cursor is None else _cursor_pair(cursor),
        )

    def matches(self, entry: dict[str, Any]) -> bool:
        for name, wanted in self.filters:
            if str(entry.get(name)) != wanted:
                return False
        if self.since is not None and entry["last"] < self.since:
            return False
        if self.until is not None and entry["at"] > self.until:
            return False
        return self.cursor is None or order(entry) < self.cursor


def order(entry: dict[str, Any]) -> tuple[str, str]:
    """Newest first: by the latest event, then by id, so a page boundary is exact."""
    return entry["last"], entry["id"]


def _text(field: str, value: Any) -> str:
    if not isinstance(value, str) or len(value) > 64:
        raise QueryError(field, "must be an ISO-8601 time such as 2026-12-01T10:00:00Z")
    return value


#: RFC 3339's leap second (``23:59:60`` UTC, so ``00:59:60+01:00`` too), which ``datetime``
#: cannot hold: read as the next second.
_LEAP_SECOND = re.compile(r"(T\d\d:\d\d):60")


def _instant(field: str, raw: str) -> str:
    # RFC 3339 allows a lowercase "t" and "z" (section 5.6).
    text, leap = _LEAP_SECOND.subn(r"\1:59", raw.upper().replace("Z", "+00:00"), count=1)
    try:
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        if leap:  # only ever the last second of a UTC day
            if moment.astimezone(UTC).time().replace(microsecond=0) != clock_time(23, 59, 59):
                raise ValueError("not a leap second")
            moment += timedelta(seconds=1)
        # 0001-01-01T00:00+01:00 is a valid time that falls before year 1 in UTC.
        text = moment.astimezone(UTC).isoformat(timespec="milliseconds")
    except (ValueError, OverflowError):
        raise QueryError(field, "must be an ISO-8601 time such as 2026-12-01T10:00:00Z") from None
    return text.replace("+00:00", "Z")


def encode_cursor(entry: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(codec.dumps(list(order(entry)))).decode().rstrip("=")


def _cursor(raw: str) -> tuple[str, str]:
    try:
        data = codec.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (binascii.Error, ValueError):
        raise QueryError("cursor", "is not a cursor this service gave out") from None
    return _cursor_pair(data)


def _cursor_pair(data: Any) -> tuple[str, str]:
    if not (isinstance(data, list) and len(data) == 2 and all(isinstance(x, str) for x in data)):
        raise QueryError("cursor", "is not a cursor this service gave out")
    return data[0], data[1]


LIMIT_RULE = f"must be a whole number from 1 to {MAX_LIMIT}"


def _limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise QueryError("limit", LIMIT_RULE)
    return limit


def _filter_value(name: str, value: Any) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= 320:
        raise QueryError(name, "must be 1-320 characters")
    return value


def parse_query(params: Mapping[str, str]) -> Query:
    """Check every parameter; the first problem is a :class:`QueryError` naming it."""
    unknown = sorted(set(params) - PARAMS)
    if unknown:
        raise QueryError(unknown[0], f"is not a filter (use {', '.join(sorted(PARAMS))})")
    filters = []
    for name in FILTERS:
        value = params.get(name)
        if value is not None:
            filters.append((name, _filter_value(name, value)))
    raw_limit = params.get("limit", str(DEFAULT_LIMIT))
    if not re.fullmatch(r"[0-9]{1,6}", raw_limit):
        raise QueryError("limit", LIMIT_RULE)
    since = _instant("since", params["since"]) if "since" in params else None
    until = _instant("until", params["until"]) if "until" in params else None
    if since and until and since > until:
        raise QueryError("until", "is before since")
    cursor = _cursor(params["cursor"]) if "cursor" in params else None
    return Query(tuple(filters), since, until, _limit(int(raw_limit)), cursor)


class Newest:
    """The newest ``limit`` entries of a query among those offered, kept in a heap of
    ``limit + 1``: a partition's scan holds one page in memory, not every match."""

    def __init__(self, query: Query) -> None:
        self.query = query
        self._heap: list[tuple[tuple[str, str], int, dict[str, Any]]] = []
        self._seen = 0  # breaks ties between equal orders, so entries are never compared

    def offer(self, entries: Iterable[dict[str, Any]]) -> None:
        keep = self.query.limit + 1
        for entry in entries:
            if self.query.matches(entry):
                self._seen += 1
                item = (order(entry), self._seen, entry)
                if len(self._heap) < keep:
                    heapq.heappush(self._heap, item)
                else:
                    heapq.heappushpop(self._heap, item)

    def page(self) -> tuple[list[dict[str, Any]], bool]:
        """The newest ``limit`` matching entries, and whether older ones match too."""
        found = [entry for _, _, entry in sorted(self._heap, reverse=True)]
        return found[: self.query.limit], len(found) > self.query.limit


def merge(
    pages: Iterable[tuple[list[dict[str, Any]], bool]], limit: int
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """One page from every partition's: the newest ``limit`` overall, and the entry to continue
    after (None on the last page). A partition that had more matches bounds the page at its own
    oldest item, since anything older from it was not seen."""
    items: list[dict[str, Any]] = []
    boundary: tuple[str, str] | None = None
    for found, more in pages:
        items.extend(found)
        if more and found:
            edge = order(found[-1])
            boundary = edge if boundary is None or edge > boundary else boundary
    items.sort(key=order, reverse=True)
    if boundary is not None:
        items = [e for e in items if order(e) >= boundary]
    has_more = boundary is not None or len(items) > limit
    items = items[:limit]
    return items, (items[-1] if has_more and items else None)


# An answer has to fit in one record of the results topic, with room to spare.
MAX_ANSWER_BYTES = 800_000


class SendLog:
    """Owns the ``send_log`` rows: records events, answers one partition's share of a query,
    sweeps old entries. A query without a receiver and a sweep read a whole partition, with
    ``scan`` (:class:`app.flows.Scan`), so the worker's other requests go on meanwhile."""

    def __init__(
        self,
        rows: MutableMapping[bytes, bytes],
        outbox: Outbox,
        metrics: Metrics,
        scan: Scan,
        retention_seconds: float | None = None,
        clock: Clock = time.time,
    ) -> None:
        self.rows = BoundedRows(rows)
        self.outbox = outbox
        self.metrics = metrics
        self.scan = scan
        self.retention_seconds = retention_seconds
        self.clock = clock

    def row(self, key: bytes) -> dict[str, Any]:
        raw = self.rows.get(key)
        return codec.loads(raw) if raw is not None else {}

    def record(self, record: Inbound) -> None:
        """Join one delivery event to its entry; a record not of ours is skipped."""
        key = record.key or b""
        if len(record.value or b"") > MAX_EVENT_BYTES:
            log.warning(
                "send log: skipped an event over %d bytes at %s", MAX_EVENT_BYTES, record.source
            )
            return
        try:
            updated = apply(self.row(key) or None, codec.loads_object(record.value or b""))
            if updated is not None:
                self.rows[key] = fit(updated)
        except Exception:  # the stream must go on: nothing on the events topic is trusted
            log.warning("send log: skipped an unreadable event at %s", record.source)

    async def partition(self, partition: int) -> AsyncIterator[tuple[bytes, dict[str, Any]]]:
        """Every row of ``partition`` that decodes to a row; the others are skipped."""
        async for key, raw in self.scan.rows((partition,)):
            try:
                row = codec.loads(raw)
            except ValueError:
                row = None
            if isinstance(row, dict):
                yield key, row
            else:
                log.warning("send log: skipped a row that is not a send log row")

    async def command(self, record: Inbound) -> None:
        try:
            command = codec.loads_object(record.value or b"")
            if command.get("k") == "q":
                await self.answer(command, record.partition)
            elif command.get("k") == "x":
                await self.sweep(self.cutoff(command.get("cutoff")), record.partition)
        except QueryError as exc:
            log.warning("send log: refused the command at %s: %s", record.source, exc)
        except Exception:  # the stream must go on
            log.exception("send log: could not handle %s", record.source)

    def cutoff(self, asked: Any) -> str:
        """The sweep's cutoff: the one asked for, but never later than the retention allows.

        The timer asks for now minus the retention; a command from anyone else that asked for
        9999-12-31 would have deleted every entry of the partition.
        """
        cutoff = _instant("cutoff", _text("cutoff", asked))
        if self.retention_seconds is not None:  # iso_utc writes what _instant does
            cutoff = min(cutoff, iso_utc(self.clock() - self.retention_seconds) or cutoff)
        return cutoff

    async def answer(self, command: dict[str, Any], partition: int) -> None:
        query = Query.from_dict(command["q"])
        newest = Newest(query)
        if query.receiver:  # that one row; otherwise every row of this partition
            newest.offer(self.row(query.receiver.encode()).get("entries", {}).values())
        else:
            async for _, row in self.partition(partition):
                newest.offer(row.get("entries", {}).values())
        found, more = newest.page()
        result = {"id": command["id"], "status": 200, "body": {"items": found, "more": more}}
        while len(value := codec.dumps(result)) > MAX_ANSWER_BYTES and found:
            found = found[: len(found) // 2]  # the newest half: ``merge`` bounds the page by it
            result["body"] = {"items": found, "more": True}
        await self.outbox.send(Route.TEMPLATE_RESULTS, None, value, [])

    async def sweep(self, cutoff: str, partition: int) -> None:
        async for key, row in self.partition(partition):
            kept = sweep(row, cutoff)
            before = len(row.get("entries", {}))
            if kept is None:
                del self.rows[key]
            elif kept != row:
                self.rows[key] = codec.dumps(kept)
            self.metrics.send_log_swept.inc(before - len((kept or {}).get("entries", {})))
