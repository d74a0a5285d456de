"""The table scans of ``app.runtime.store`` against real rocksdict DBs opened as Faust opens
its partitions."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import rocksdict
from faust.types import TP
from hypothesis import given, settings
from hypothesis import strategies as st

from app.runtime.store import active_partitions, partition_rows, table_scan

OFFSET_KEY = b"__faust\0offset__"
CHANGELOG = "otp-service-otps-changelog"


def open_db(path: Path) -> rocksdict.Rdict:
    return rocksdict.Rdict(str(path), options=rocksdict.Options(raw_mode=True))


def table_with(
    path: Path, rows: dict[bytes, bytes], actives: set[TP] | None = None
) -> SimpleNamespace:
    db = open_db(path)
    for key, value in rows.items():
        db[key] = value
    db[OFFSET_KEY] = b"41"  # Faust's own row: never a table row
    store = SimpleNamespace(
        _dbs={3: db},
        offset_key=OFFSET_KEY,
        _encode_key=lambda key: key,
        _decode_key=lambda key: key,
        _decode_value=lambda value: value,
    )
    assignor = SimpleNamespace(
        assigned_actives=lambda: {TP(CHANGELOG, 3)} if actives is None else actives
    )
    return SimpleNamespace(
        data=store,
        changelog_topic_name=CHANGELOG,
        is_global=False,
        app=SimpleNamespace(assignor=assignor),
    )


def test_chunks_cover_every_row_once_in_key_order(tmp_path: Path):
    rows = {f"r{i:03d}@x.example".encode(): f"v{i}".encode() for i in range(25)}
    table = table_with(tmp_path / "db", rows)
    seen, after = [], None
    while chunk := partition_rows(table, 3, after, 7):
        assert len(chunk) <= 7
        seen += chunk
        after = chunk[-1][0]
    assert seen == sorted(rows.items())


def test_a_chunk_after_a_deleted_key_goes_on_from_the_next_one(tmp_path: Path):
    rows = {b"a": b"1", b"b": b"2", b"c": b"3", b"d": b"4"}
    table = table_with(tmp_path / "db", rows)
    [first, second] = partition_rows(table, 3, None, 2)
    del table.data._dbs[3][second[0]]  # a sweep deleted it meanwhile
    assert partition_rows(table, 3, second[0], 10) == [(b"c", b"3"), (b"d", b"4")]


def test_a_partition_not_held_here_has_no_rows(tmp_path: Path):
    table = table_with(tmp_path / "db", {b"a": b"1"})
    assert partition_rows(table, 0, None, 10) == []


def test_a_scan_reads_the_partitions_owned_here_not_the_standbys(tmp_path: Path):
    table = table_with(tmp_path / "db3", {b"a": b"1"}, actives={TP(CHANGELOG, 3), TP("x", 5)})
    table.data._dbs[5] = open_db(tmp_path / "db5")  # a standby copy of partition 5
    table.data._dbs[5][b"b"] = b"2"
    assert active_partitions(table) == [3]

    async def rows() -> list[tuple[bytes, bytes]]:
        return [row async for row in table_scan(table).rows()]

    assert asyncio.run(rows()) == [(b"a", b"1")]


def test_a_paused_scan_lets_its_partition_be_closed_and_opened_again(tmp_path: Path):
    """Faust closes a revoked partition's DB and opens it again when the partition comes
    back. A scan that held a RocksDB iterator across its pauses kept the DB locked
    (``lock hold by current process``), and Faust stops a worker that cannot open it."""
    rows = {f"k{i:04d}".encode(): b"v" for i in range(450)}
    table = table_with(tmp_path / "db", rows)

    async def scan_across_a_reopen() -> list[bytes]:
        scan = table_scan(table).rows()
        seen = [(await anext(scan))[0]]  # paused inside the first chunk
        table.data._dbs.pop(3).close()  # revoked
        table.data._dbs[3] = open_db(tmp_path / "db")  # assigned again
        seen += [key async for key, _ in scan]
        return seen

    assert asyncio.run(scan_across_a_reopen()) == sorted(rows)


def test_a_scan_stops_reading_a_partition_handed_to_a_standby_meanwhile(tmp_path: Path):
    """A rebalance may leave a partition here as a standby: its DB stays open, but a sweep
    must not go on deleting or rewriting rows another worker now owns."""
    actives = {TP(CHANGELOG, 3)}
    rows = {f"k{i:04d}".encode(): b"v" for i in range(450)}
    table = table_with(tmp_path / "db", rows, actives=actives)

    async def scan_across_a_rebalance() -> list[bytes]:
        scan = table_scan(table).rows()
        seen = [(await anext(scan))[0]]
        actives.clear()  # the partition is now a standby here
        seen += [key async for key, _ in scan]
        return seen

    assert asyncio.run(scan_across_a_rebalance()) == sorted(rows)[:200]  # that chunk only


keys = st.binary(min_size=1, max_size=3)


@settings(max_examples=60, deadline=None, database=None)
@given(
    start=st.sets(keys, max_size=600),
    changes=st.lists(st.tuples(st.sets(keys, max_size=40), st.sets(keys, max_size=40))),
)
def test_a_scan_yields_each_row_kept_throughout_once_in_key_order(
    tmp_path_factory, start: set[bytes], changes: list[tuple[set[bytes], set[bytes]]]
):
    """Rows added and deleted while a scan pauses (other streams write meanwhile): every row
    there from start to end is read exactly once, no row twice, in key order."""
    table = table_with(tmp_path_factory.mktemp("db"), dict.fromkeys(start, b"v"))
    db = table.data._dbs[3]
    kept = set(start)

    async def scan_while_writing() -> list[bytes]:
        seen, pending = [], list(changes)

        async def writer() -> None:  # one batch of writes in each pause of the scan
            while pending:
                added, deleted = pending.pop(0)
                for key in added:
                    db[key] = b"w"
                for key in deleted - {OFFSET_KEY}:
                    db.delete(key)
                kept.difference_update(deleted | added)
                await asyncio.sleep(0)

        task = asyncio.ensure_future(writer())
        seen = [key async for key, _ in table_scan(table).rows()]
        await task
        return seen

    seen = asyncio.run(scan_while_writing())
    assert seen == sorted(set(seen))
    assert kept <= set(seen)
    assert OFFSET_KEY not in seen
