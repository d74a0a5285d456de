"""One partition's rows of a RocksDB-backed Faust table, read from its non-public store.

Faust iterates a table over every partition a worker holds; a per-partition sweep or query
built on that reads every row once per partition, and hashes every key to find its partition
(the send log's sweep did: at 30,000 receivers it took a fifth of a worker's CPU). The store
keeps one RocksDB per partition (``_dbs``); this reads the one asked for, a chunk at a time
(:class:`app.flows.Scan`). None of it is documented API: ``tests/unit/test_runtime_hooks.py``
names each attribute used here.
"""

from __future__ import annotations

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


def active_partitions(table: Any) -> list[int]:
    """The partitions of ``table`` this worker holds as their owner, not as a standby: the
    ones Faust's own iteration of a table reads (``Store._dbs_for_actives``)."""
    actives = table.app.assignor.assigned_actives()
    topic = table.changelog_topic_name
    return sorted(p for p in table.data._dbs if TP(topic, p) in actives)


def table_scan(table: Any) -> Scan:
    """A :class:`~app.flows.Scan` of the partitions of ``table`` this worker owns."""
    return Scan(
        partitions=lambda: active_partitions(table),
        chunk=lambda partition, after, count: partition_rows(table, partition, after, count),
    )
