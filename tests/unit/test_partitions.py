"""Kafka's default partitioner, word at a time: the same partitions as every other client."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from hypothesis import given
from hypothesis import strategies as st

from app.core.partitions import Partitioner, murmur2, partition_of

# The Java client's own cases (``UtilsTest.testMurmur2``), as signed 32-bit integers.
JAVA_CASES = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


def test_murmur2_gives_the_java_clients_hashes() -> None:
    for data, signed in JAVA_CASES.items():
        assert murmur2(data) == signed & 0xFFFFFFFF, data


@given(st.binary(max_size=300))
def test_murmur2_is_aiokafkas_for_any_bytes(data: bytes) -> None:
    assert murmur2(data) == aiokafka_murmur2(data)


@given(st.binary(max_size=80), st.integers(min_value=1, max_value=500))
def test_a_key_lands_where_aiokafkas_default_partitioner_puts_it(key: bytes, count: int) -> None:
    partitions = list(range(count))
    expected = DefaultPartitioner()(key, partitions, partitions)
    assert Partitioner()(key, partitions, partitions) == expected == partition_of(key, count)


def test_a_keyless_record_goes_to_an_available_partition() -> None:
    partitioner = Partitioner()
    assert {partitioner(None, [0, 1, 2, 3], [2]) for _ in range(50)} == {2}
    assert {partitioner(None, [0, 1], []) for _ in range(200)} == {0, 1}
