"""aiokafka's fetcher, made to survive records it cannot decode.

aiokafka decodes every header *name* as UTF-8 while it unpacks a fetched batch. A record whose
header name is not valid UTF-8 (the protocol calls it a string, but any client can write any
bytes) raises ``UnicodeDecodeError`` out of ``getmany``: Faust's consumer dies, the record is
never committed, and every replacement worker dies on it again. One record from anyone who can
write to an IN topic stops the whole group.

:func:`install` replaces the fetcher's partition unpacking with one that, when a batch fails to
decode, reads that batch again with a lenient reader: names that are not UTF-8 are kept as their
``backslashreplace`` form (``\\xff\\xfe``), which every producer can write again, and the
record's position and reason are remembered (:func:`undecodable`) so the agent that receives it
dead-letters it instead of acting on it. Batches that decode (all of them, normally) take
aiokafka's own fast path unchanged.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from aiokafka.consumer import fetcher as aiokafka_fetcher
from aiokafka.errors import CorruptRecordException
from aiokafka.record.default_records import _DefaultRecordBatchPy
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.record.util import decode_varint

log = logging.getLogger(__name__)

# Positions remembered at most; a record is looked up right after it is fetched, so this only
# has to outlive the events queued in one worker.
_REMEMBERED = 100_000
_undecodable: OrderedDict[tuple[str, int, int], str] = OrderedDict()

_LOG_OVERHEAD = 12  # baseOffset int64 + batchLength int32
_MAGIC_AT = 16  # after partitionLeaderEpoch int32


def undecodable(topic: str, partition: int, offset: int) -> str | None:
    """Why the record at this position could not be decoded as fetched, or None if it could."""
    return _undecodable.get((topic, partition, offset))


def _remember(topic: str, partition: int, offset: int, reason: str) -> None:
    _undecodable[(topic, partition, offset)] = reason
    _undecodable.move_to_end((topic, partition, offset))
    while len(_undecodable) > _REMEMBERED:
        _undecodable.popitem(last=False)


@dataclass(frozen=True)
class LenientRecord:
    """One record of a v2 batch, read without trusting its header names."""

    offset: int
    timestamp: int
    timestamp_type: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    problem: str | None
    checksum: None = None


def _bytes_field(buffer: bytes | bytearray, pos: int) -> tuple[bytes | None, int]:
    length, pos = decode_varint(buffer, pos)
    if length < 0:
        return None, pos
    if pos + length > len(buffer):
        raise CorruptRecordException("a record field runs past the end of its batch")
    return bytes(buffer[pos : pos + length]), pos + length


def read_batch(raw: bytes | bytearray | memoryview) -> Iterator[LenientRecord]:
    """Every record of one v2 record batch (``raw`` starts at its base offset).

    The layout is Kafka's (``DefaultRecordBatch``); decompression is aiokafka's. A header name
    that is not UTF-8 is kept in its escaped form and named in ``problem``.
    """
    batch = _DefaultRecordBatchPy(bytes(raw))
    iter(batch)  # decompresses the records section
    buffer, pos = batch._buffer, batch._pos
    append_time = batch.timestamp_type == batch.LOG_APPEND_TIME
    for _ in range(batch._num_records):
        length, pos = decode_varint(buffer, pos)
        end = pos + length
        _, pos = decode_varint(buffer, pos)  # attributes: unused in v2
        ts_delta, pos = decode_varint(buffer, pos)
        offset_delta, pos = decode_varint(buffer, pos)
        key, pos = _bytes_field(buffer, pos)
        value, pos = _bytes_field(buffer, pos)
        count, pos = decode_varint(buffer, pos)
        if count < 0:
            raise CorruptRecordException(f"invalid number of record headers {count}")
        headers: list[tuple[str, bytes | None]] = []
        problems: list[str] = []
        for index in range(count):
            name, pos = _bytes_field(buffer, pos)
            if name is None:
                raise CorruptRecordException("a header name is null")
            try:
                text = name.decode("utf-8")
            except UnicodeDecodeError:
                text = name.decode("utf-8", "backslashreplace")
                problems.append(f"header {index} name {text!r} is not valid UTF-8")
            header_value, pos = _bytes_field(buffer, pos)
            headers.append((text, header_value))
        if pos != end:
            raise CorruptRecordException("a record's length does not match its fields")
        yield LenientRecord(
            offset=batch.base_offset + offset_delta,
            timestamp=batch.max_timestamp if append_time else batch.first_timestamp + ts_delta,
            timestamp_type=batch.timestamp_type,
            key=key,
            value=value,
            headers=headers,
            problem="; ".join(problems) or None,
        )


def _is_decode_failure(exc: BaseException) -> bool:
    if isinstance(exc, UnicodeDecodeError):
        return True
    # aiokafka's pure-Python reader wraps it (``AIOKAFKA_NO_EXTENSIONS``).
    return isinstance(exc, CorruptRecordException) and isinstance(exc.__cause__, UnicodeDecodeError)


class _KeptRecords:
    """aiokafka's ``MemoryRecords`` of one fetch response, with the raw bytes kept beside it."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._records = MemoryRecords(data)

    def size_in_bytes(self) -> int:
        return self._records.size_in_bytes()

    def has_next(self) -> bool:
        return self._records.has_next()

    def next_batch(self) -> Any:
        return self._records.next_batch()


class TolerantPartitionRecords(aiokafka_fetcher.PartitionRecords):
    """aiokafka's unpacking of one partition's fetched records, with a lenient fallback."""

    def _unpack_records(self) -> Iterator[Any]:
        inner = super()._unpack_records()
        while True:
            try:
                record = next(inner)
            except StopIteration:
                return
            except (UnicodeDecodeError, CorruptRecordException) as exc:
                if not _is_decode_failure(exc):
                    raise
                # aiokafka's generator is finished after raising; go on from here ourselves.
                yield from self._unpack_leniently()
                return
            yield record

    def _unpack_leniently(self) -> Iterator[Any]:
        """Read the rest of the fetch response with :func:`read_batch`, batch by batch.

        ``next_fetch_offset`` is the first offset not yielded yet: the failing batch is read
        from its start and the records already delivered are skipped.
        """
        tp = self._tp
        data = self._records.data if isinstance(self._records, _KeptRecords) else None
        if data is None:
            raise CorruptRecordException(f"undecodable record in {tp} and no raw batch kept")
        for raw in _v2_batches(data):
            batch = _DefaultRecordBatchPy(bytes(raw))
            if self._skipped(batch):
                self.next_fetch_offset = max(self.next_fetch_offset, batch.next_offset)
                continue
            for record in read_batch(raw):
                if record.offset < self.next_fetch_offset:
                    continue
                if record.problem is not None:
                    _remember(tp.topic, tp.partition, record.offset, record.problem)
                    log.warning(
                        "%s/%d: record %d has a header name that is not UTF-8",
                        tp.topic,
                        tp.partition,
                        record.offset,
                    )
                consumer_record = self._consumer_record(tp, record)
                self.next_fetch_offset = record.offset + 1
                yield consumer_record
            self.next_fetch_offset = batch.next_offset

    def _skipped(self, batch: _DefaultRecordBatchPy) -> bool:
        """Whether a batch yields nothing: control, aborted, or delivered already.

        Transactions are followed as aiokafka does, so the lenient path
        delivers exactly what aiokafka's own would have.
        """
        if self._isolation_level == aiokafka_fetcher.READ_COMMITTED and self._aborted(batch):
            return True
        return batch.is_control_batch or batch.next_offset <= self.next_fetch_offset

    def _aborted(self, batch: _DefaultRecordBatchPy) -> bool:
        """Whether a batch belongs to an aborted transaction (``read_committed`` only).

        Also tracks the aborted producers: the abort marker (a control batch)
        ends a producer's aborted transaction.
        """
        if batch.producer_id is None:
            return False
        self._consume_aborted_up_to(batch.base_offset)
        if batch.is_control_batch and self._contains_abort_marker(batch):
            self._aborted_producers.discard(batch.producer_id)
        return batch.is_transactional and batch.producer_id in self._aborted_producers


def _v2_batches(data: bytes) -> Iterator[memoryview]:
    """The complete record batches of a fetch response that can hold headers (magic 2).

    A batch cut off at the end of the response (or a nonsensical length) ends
    the walk: the consumer fetches from there again next time.  Legacy (magic
    0/1) batches have no headers, so aiokafka read them already.
    """
    view = memoryview(data)
    pos = 0
    while pos + _LOG_OVERHEAD <= len(view):
        length = int.from_bytes(view[pos + 8 : pos + 12], "big", signed=True)
        end = pos + _LOG_OVERHEAD + length
        if length < 0 or end > len(view):
            return
        raw, pos = view[pos:end], end
        if raw[_MAGIC_AT] >= 2:
            yield raw


def install() -> None:
    """Make every aiokafka consumer of this process tolerant (idempotent)."""
    aiokafka_fetcher.PartitionRecords = TolerantPartitionRecords
    aiokafka_fetcher.MemoryRecords = _KeptRecords
