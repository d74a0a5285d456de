"""The tolerant fetcher: a record aiokafka cannot decode is delivered, escaped and flagged."""

import pytest
from aiokafka.consumer import fetcher as aiokafka_fetcher
from aiokafka.record.default_records import (
    _DefaultRecordBatchBuilderPy,
    _DefaultRecordBatchPy,
)
from aiokafka.structs import TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st

from app.runtime import fetch
from tests.fakes.hostile import RawName

TP = TopicPartition("in", 3)


def batch(base_offset, records, compression=0):
    builder = _DefaultRecordBatchBuilderPy(
        magic=2,
        compression_type=compression,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=10_000_000,
    )
    for i, (key, value, headers) in enumerate(records):
        builder.append(i, 1000 + i, key, value, [(RawName(n), v) for n, v in headers])
    raw = bytearray(builder.build())
    raw[0:8] = base_offset.to_bytes(8, "big", signed=True)
    return bytes(raw)


def unpack(data, fetch_offset=0):
    records = fetch.TolerantPartitionRecords(
        TP, fetch._KeptRecords(data), [], fetch_offset, None, None, True, 0
    )
    return list(records), records.next_fetch_offset


def test_a_batch_that_decodes_takes_aiokafkas_path():
    data = batch(0, [(b"k", b"v", [(b"ok", b"1")])])
    [record], next_offset = unpack(data)
    assert record.headers == (("ok", b"1"),) and next_offset == 1
    assert fetch.undecodable("in", 3, 0) is None


def test_an_undecodable_header_name_is_escaped_and_flagged_and_nothing_is_lost():
    data = (
        batch(0, [(b"k0", b"v0", [])])
        + batch(
            1,
            [
                (b"k1", b"v1", [(b"a", b"x")]),
                (b"k2", b"v2", [(b"\xff\xfe", b"y"), (b"fine", None)]),
                (b"k3", None, []),
            ],
        )
        + batch(4, [(None, b"v4", [(b"\xc3", b"")])])
    )
    got, next_offset = unpack(data)
    assert [r.offset for r in got] == [0, 1, 2, 3, 4]
    assert [r.key for r in got] == [b"k0", b"k1", b"k2", b"k3", None]
    assert got[2].headers == (("\\xff\\xfe", b"y"), ("fine", None))
    assert got[2].value == b"v2" and got[3].value is None
    assert next_offset == 5
    assert "not valid UTF-8" in fetch.undecodable("in", 3, 2)
    assert fetch.undecodable("in", 3, 1) is None
    assert fetch.undecodable("in", 3, 4) is not None


def test_records_before_the_fetch_offset_are_skipped_in_the_lenient_path_too():
    data = batch(10, [(b"a", b"1", []), (b"b", b"2", [(b"\xff", None)]), (b"c", b"3", [])])
    got, _ = unpack(data, fetch_offset=11)
    assert [r.offset for r in got] == [11, 12]


def test_compressed_batches_are_read_leniently():
    data = batch(0, [(b"k", b"v" * 100, [(b"\xff", b"1")])], compression=1)
    assert _DefaultRecordBatchPy(data).compression_type == 1
    [record], _ = unpack(data)
    assert record.value == b"v" * 100 and record.headers[0][0] == "\\xff"


def test_install_replaces_the_fetchers_unpacking():
    fetch.install()
    assert aiokafka_fetcher.PartitionRecords is fetch.TolerantPartitionRecords
    assert aiokafka_fetcher.MemoryRecords is fetch._KeptRecords


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.none() | st.binary(max_size=20),
            st.none() | st.binary(max_size=20),
            st.lists(
                st.tuples(st.binary(max_size=8), st.none() | st.binary(max_size=8)), max_size=4
            ),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_any_header_names_keys_and_values_are_delivered(records):
    data = batch(100, records)
    got, next_offset = unpack(data)
    assert [r.offset for r in got] == list(range(100, 100 + len(records)))
    assert next_offset == 100 + len(records)
    for record, (key, value, headers) in zip(got, records, strict=True):
        assert record.key == key and record.value == value
        assert [v for _, v in record.headers] == [v for _, v in headers]
        for (name, _), (raw, _) in zip(record.headers, headers, strict=True):
            name.encode("utf-8")  # every delivered name can be written again
            if fetch.undecodable("in", 3, record.offset) is None:
                assert name.encode() == raw


def test_corrupt_batches_still_raise():
    data = bytearray(batch(0, [(b"k", b"v", [(b"\xff", b"1")])]))
    data[-3] ^= 0xFF  # break the record structure after the CRC was computed
    with pytest.raises(Exception):  # noqa: B017 - aiokafka's own CRC or structure error
        unpack(bytes(data))
