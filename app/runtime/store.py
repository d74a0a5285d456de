"""One partition's keys of a RocksDB-backed Faust table, read from its non-public store.

Faust iterates a table over every partition a worker holds; a per-partition sweep or query
built on that reads every row once per partition, and hashes every key to find its partition
(the send log's sweep did: at 30,000 receivers it took a fifth of a worker's CPU). The store
keeps one RocksDB per partition (``_dbs``); this reads the one asked for. None of it is
documented API: ``tests/unit/test_runtime_hooks.py`` names each attribute used here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def partition_keys(table: Any, partition: int) -> Iterator[bytes]:
    """The keys ``table`` holds in ``partition`` on this worker (none if it holds no such
    partition)."""
    store = table.data
    db = store._dbs.get(partition)
    if db is None:
        return iter(())
    return (store._decode_key(key) for key in list(store._visible_keys(db)))
