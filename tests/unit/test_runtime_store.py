"""``partition_rows`` against a real rocksdict DB opened as Faust opens its partitions."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import rocksdict

from app.runtime.store import partition_rows

OFFSET_KEY = b"__faust\0offset__"


def table_with(path: Path, rows: dict[bytes, bytes]) -> SimpleNamespace:
    db = rocksdict.Rdict(str(path), options=rocksdict.Options(raw_mode=True))
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
    return SimpleNamespace(data=store)


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
