"""The flows' handlers: plain classes that parse, decide, deliver, store and reply.

No Faust and no Kafka here. A handler gets one :class:`Inbound` record and its dependencies
(rows as a mapping, template lookup, channels, policy, clock, an :class:`Outbox`) from its
constructor, so every rule is tested with a dict and fakes in milliseconds
(``tests/unit/test_flows_otp.py``); the agents under ``agents/`` only connect streams to them.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    MutableMapping,
    Sequence,
)
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

from app import codec, records
from app.metrics import Metrics
from app.settings import PRODUCER_MAX_REQUEST_BYTES

log = logging.getLogger(__name__)

Headers = list[tuple[str, bytes | None]]
Rows = MutableMapping[bytes, bytes]
# The largest row a table takes: its changelog record (key, value, headers, batch framing) must
# fit in one producer request, or the producer's error stops the whole worker, and the row,
# already in RocksDB, would be written again, and fail again, at the next change of its key.
MAX_ROW_BYTES = PRODUCER_MAX_REQUEST_BYTES - 64 * 1024
# What a reply or a dead letter says of a failure the handler did not foresee (its detail is
# in the log, where a secret it might carry is masked).
INTERNAL_ERROR = "internal error while handling the request"


class RowTooLarge(ValueError):
    """A table write refused because its changelog record could not be produced."""


class BoundedRows(MutableMapping[bytes, bytes]):
    """A table, refusing (with :class:`RowTooLarge`) any row over ``MAX_ROW_BYTES``, so that
    the handler whose write it was answers its record as failed and the worker goes on."""

    def __init__(self, rows: Rows, limit: int = MAX_ROW_BYTES) -> None:
        self.rows = rows
        self.limit = limit

    def __getitem__(self, key: bytes) -> bytes:
        return self.rows[key]

    def __setitem__(self, key: bytes, value: bytes) -> None:
        if len(key) + len(value) > self.limit:
            raise RowTooLarge(f"a row of {len(key) + len(value)} bytes, over {self.limit}")
        self.rows[key] = value

    def __delitem__(self, key: bytes) -> None:
        del self.rows[key]

    def __contains__(self, key: object) -> bool:
        return key in self.rows

    def get(self, key: bytes, default: Any = None) -> Any:
        return self.rows.get(key, default)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)


T = TypeVar("T")
Clock = Callable[[], float]
# Room left in a producer request for what a dead letter adds around the original record.
DLQ_HEADROOM = 4096
# A sweep reads this many rows, then pauses so that it holds the event loop for at most
# SWEEP_LOOP_SHARE of the time it runs.
SWEEP_ROWS_PER_TURN = 200
SWEEP_LOOP_SHARE = 0.25


class Route(enum.Enum):
    """Where a handler's output goes; the app maps each route to its topic."""

    GENERATE_OUT = "generate_out"
    VALIDATE_OUT = "validate_out"
    DLQ = "dlq"
    OTP_COMMANDS = "otp_commands"
    RECEIVER_COMMANDS = "receiver_commands"
    TEMPLATE_RESULTS = "template_results"
    NOTIFY_OUT = "notify_out"
    NOTIFY_COMMANDS = "notify_commands"
    EVENTS = "events"
    MESSAGE_COMMANDS = "message_commands"


class Outbox(Protocol):
    """Produces a record on a route (Faust topics in the app, a list in tests)."""

    def send(
        self, route: Route, key: bytes | None, value: bytes | None, headers: Headers
    ) -> Awaitable[None]: ...


@dataclass(frozen=True)
class Inbound:
    """One consumed record as a handler sees it. ``timestamp`` is in seconds."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers
    timestamp: float | None = None

    @property
    def source(self) -> str:
        """``topic/partition/offset``: names the record in dead letters and request history."""
        return f"{self.topic}/{self.partition}/{self.offset}"


class DeadLetters:
    """Copies records to the DLQ; never raises (see :meth:`send`)."""

    def __init__(
        self, outbox: Outbox, metrics: Metrics, coded_topics: frozenset[str] = frozenset()
    ) -> None:
        self.outbox = outbox
        self.metrics = metrics
        self.coded_topics = coded_topics

    async def send(self, record: Inbound, reason: str, category: str = "internal") -> None:
        """Copy the record as it came (key, value, every header) with why and from where.

        Except a code: a record of ``coded_topics`` (validate requests, whose code the user
        typed and may still be right) is copied with its ``otp`` masked, or, when it is not a
        JSON object where the code could be found, as a stub; it stays on its own topic.

        A record too large to copy (or refused by the broker) becomes a stub that names its
        source and size, and if even that fails the loss is logged and counted. The caller's
        offset moves on either way: a dead letter that stopped its partition would be the
        poison it was meant to remove.
        """
        marks: Headers = [
            ("x-dlq-reason", reason.encode()),
            ("x-dlq-source", record.source.encode()),
        ]
        if record.topic in self.coded_topics:
            record = replace(record, value=without_code(record))
        headers = [*record.headers, *marks]
        size = records.record_size(record.key, record.value, headers)
        copied = size <= PRODUCER_MAX_REQUEST_BYTES - DLQ_HEADROOM and await self._try(
            record.key, record.value, headers, record.source
        )
        if not copied:
            stub = {"dlqStub": True, "source": record.source, "size": size, "reason": reason}
            stub_headers = [*marks, ("x-dlq-size", str(size).encode())]
            if not await self._try(None, codec.dumps(stub), stub_headers, record.source):
                self.metrics.dead_letters.labels(record.topic, "lost").inc()
                log.error("could not dead-letter %s, not even as a stub", record.source)
                return
        self.metrics.requests.labels(record.topic, "dead_letter").inc()
        self.metrics.dead_letters.labels(record.topic, category if copied else "stub").inc()
        log.warning("dead-lettered: %s", reason, extra={"source": record.source})

    async def _try(
        self, key: bytes | None, value: bytes | None, headers: Headers, source: str
    ) -> bool:
        try:
            await self.outbox.send(Route.DLQ, key, value, headers)
        except Exception as exc:  # the broker may refuse what the producer took
            log.warning("could not write %s to the DLQ (%s)", source, exc.__class__.__name__)
            return False
        return True


def without_code(record: Inbound) -> bytes:
    """``record``'s value with its ``otp`` (a request's, or a command's request's) masked."""
    try:
        value = codec.loads_object(record.value or b"")
        request = value.get("r")
        for fields in (value, request if isinstance(request, dict) else {}):
            if "otp" in fields:
                fields["otp"] = "***"
        return codec.dumps(value)
    except (ValueError, TypeError):  # not an object, or nested too deep to write again
        size = len(record.value or b"")
        why = "not a JSON object: it may hold a code, so it is not copied"
        return codec.dumps({"dlqStub": True, "source": record.source, "size": size, "reason": why})


def command_source(command: dict[str, Any]) -> str:
    """The engine record a command came from (``topic/partition/offset``), for idempotency."""
    return "/".join(map(str, command.get("src", ())))


def command_received_at(command: dict[str, Any]) -> float | None:
    """When the engine's record arrived (``ts``), if the command says so with a number.

    The ingest writes it, but anyone who can produce to an internal topic can write anything;
    a ``ts`` of another type used to fail the reply after the message was sent, and the
    engine got a second, contradicting reply.
    """
    ts = command.get("ts")
    # As it was written, not float(ts): the message key hashes its text.
    return ts if type(ts) in (int, float) and 0 < ts < 1e12 else None


class Pacer:
    """Paces a scan over a whole table: after each chunk of :data:`SWEEP_ROWS_PER_TURN` rows it
    pauses three times as long as it worked, so it holds the event loop a quarter of the time at
    most.

    Yielding alone is not enough: a request needs dozens of turns of the loop to be answered
    and would wait a chunk of the scan at each (``bench/sweep.py``).
    """

    def __init__(self) -> None:
        self._since = time.perf_counter()

    async def pause(self) -> None:
        busy = time.perf_counter() - self._since
        await asyncio.sleep(busy * (1 - SWEEP_LOOP_SHARE) / SWEEP_LOOP_SHARE)
        self._since = time.perf_counter()


# ``(partition, after, count)``: up to ``count`` rows (key, stored value) of ``partition``
# after the key ``after``, in key order; none once the partition is not owned here.
PartitionRows = Callable[[int, bytes | None, int], Sequence[tuple[bytes, bytes]]]


@dataclass(frozen=True)
class Scan:
    """Reads a whole table a partition and a chunk at a time, pausing between chunks
    (:class:`Pacer`), so a sweep or a query over a large table lets the requests go on.

    ``partitions()`` names the partitions this worker owns; ``chunk`` reads one chunk of one
    (straight from the partition's RocksDB in a worker, ``app.runtime.store``). No iterator
    is held across a pause: a live RocksDB iterator keeps its partition's DB open, so a
    partition revoked and given back during a scan could not be opened again until the scan
    ended, and Faust stops the worker after 30 failed tries.
    """

    partitions: Callable[[], Iterable[int]]
    chunk: PartitionRows

    async def rows(
        self, partitions: Iterable[int] | None = None
    ) -> AsyncIterator[tuple[bytes, bytes]]:
        """Every row of ``partitions`` (by default, every partition owned here).

        The pauses fall between chunks, never inside one: a caller that does not await between
        rows sees each row as the store holds it then, so what it writes back loses nothing
        another stream wrote during a pause. A partition this worker stops owning during a
        pause yields no more rows, so nothing is read or written there once it is gone.
        """
        pacer = Pacer()
        for partition in self.partitions() if partitions is None else partitions:
            after = None
            while chunk := self.chunk(partition, after, SWEEP_ROWS_PER_TURN):
                for key, raw in chunk:
                    yield key, raw
                after = chunk[-1][0]
                await pacer.pause()


async def expired_keys(
    scan: Scan,
    read: Callable[[dict[str, Any]], T],
    expired: Callable[[T], bool],
    counted: Callable[[int], object] | None = None,
) -> list[bytes]:
    """Keys of the rows ``expired`` says can go; a row that does not decode, or that
    ``expired`` cannot judge (a field of the wrong type), is left alone.
    ``counted`` gets the number of rows read, for a gauge that needs no second scan.

    ``read`` should take from the row only what ``expired`` needs: a sweep reads every row of
    its table, and building the whole record cost more than the rest of the scan.
    """
    found, count = [], 0
    async for key, raw in scan.rows():
        count += 1
        try:
            gone = expired(read(codec.loads(raw)))
        except (ValueError, KeyError, TypeError):
            continue
        if gone:
            found.append(key)
    if counted is not None:
        counted(count)
    return found
