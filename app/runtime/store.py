"""One partition's rows of a RocksDB-backed Faust table, read from its non-public store.

Faust iterates a table over every partition a worker holds; a per-partition sweep or query
built on that reads every row once per partition, and hashes every key to find its partition
(the send log's sweep did: at 30,000 receivers it took a fifth of a worker's CPU). The store
keeps one RocksDB per partition (``_dbs``); this reads the one asked for, a chunk at a time
(:class:`app.flows.Scan`). None of it is documented API: ``tests/unit/test_runtime_hooks.py``
names each attribute used here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from faust.types import TP

from app.flows import Scan


def partition_rows(
    table: Any, partition: int, after: bytes | None, count: int
) -> list[tuple[bytes, bytes]]:
    """Up to ``count`` rows (key, stored value) ``table`` holds in ``partition`` on this worker,
    in key order, after the key ``after``: one pass of that partition's RocksDB iterator, where
    a scan by keys looked each row up again through the table. The iterator is not kept, so
    the caller may pause between chunks (none once the partition is no longer held here)."""
    store = table.data
    db = store._dbs.get(partition)
    if db is None:
        return []
    start = store._encode_key(after) if after is not None else None
    rows = []
    for key, value in db.items(from_key=start):
        if key == start or key == store.offset_key:
            continue
        rows.append((store._decode_key(key), store._decode_value(value)))
        if len(rows) == count:
            break
    return rows


def owned(table: Any, partitions: Iterable[int]) -> list[int]:
    """Those of ``partitions`` of ``table`` this worker holds as their owner (a global table's
    every partition), not as a standby: Faust's own test (``Store._dbs_for_actives``). The
    assignor builds its set of active partitions anew on every call, so it is asked once."""
    actives = table.app.assignor.assigned_actives()
    topic = table.changelog_topic_name
    return sorted(p for p in partitions if table.is_global or TP(topic, p) in actives)


def active_partitions(table: Any) -> list[int]:
    """The partitions of ``table`` this worker owns: the ones Faust's iteration reads."""
    return owned(table, table.data._dbs)


def table_scan(table: Any) -> Scan:
    """A :class:`~app.flows.Scan` of the partitions of ``table`` this worker owns. Ownership is
    checked again for every chunk, as a scan pauses between chunks and a rebalance may move
    the partition to a standby meanwhile (its DB stays open then, so it would still read)."""

    def chunk(partition: int, after: bytes | None, count: int) -> list[tuple[bytes, bytes]]:
        return partition_rows(table, partition, after, count) if owned(table, (partition,)) else []

    return Scan(partitions=lambda: active_partitions(table), chunk=chunk)
