"""A batch Faust is about to discard (fetched as the flow stopped) is read again.

Faust's own ``getmany`` drops such a batch and seeks back to the committed offsets only, which
changelog partitions do not have; the consumer seeks each partition back to its first dropped
record instead. Faust's fetch is replaced by a stub here; ``make chaos`` runs the real race.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from faust.transport import consumer as faust_consumer
from faust.types import TP

from app.runtime.consumer import LedgerConsumer, first_offsets, seekable

CHANGELOG = TP("otps-changelog", 3)
SOURCE = TP("generate-in", 3)
GONE = TP("otps-changelog", 5)


def batch(*offsets: int) -> list[Any]:
    return [SimpleNamespace(offset=o) for o in offsets]


def test_first_offsets() -> None:
    records = {CHANGELOG: batch(7, 8, 9), SOURCE: batch(42), GONE: []}
    assert first_offsets(records) == {CHANGELOG: 7, SOURCE: 42}


def consumer_with(monkeypatch: pytest.MonkeyPatch, records: Any, flow_active: bool) -> Any:
    async def fetched(self: Any, timeout: float) -> tuple[Any, Any]:
        return records, {CHANGELOG, SOURCE}

    monkeypatch.setattr(faust_consumer.Consumer, "_wait_next_records", fetched)
    consumer = LedgerConsumer.__new__(LedgerConsumer)
    consumer.flow_active = flow_active
    consumer.seeks = []
    consumer.assignment = lambda: {CHANGELOG, SOURCE}

    async def seek_wait(positions: Any) -> None:
        consumer.seeks.append(dict(positions))

    consumer.seek_wait = seek_wait
    return consumer


async def test_a_batch_fetched_while_the_flow_is_stopped_is_read_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    records = {CHANGELOG: batch(0, 1, 2), SOURCE: batch(10, 11), GONE: batch(4)}
    consumer = consumer_with(monkeypatch, records, flow_active=False)
    got, active = await consumer._wait_next_records(1.0)
    assert got == {}  # nothing is handed on while the flow is stopped
    assert active == {CHANGELOG, SOURCE}
    # every assigned partition goes back to its first dropped record (GONE is not ours now)
    assert consumer.seeks == [{CHANGELOG: 0, SOURCE: 10}]


async def test_a_batch_in_a_running_flow_is_handed_on(monkeypatch: pytest.MonkeyPatch) -> None:
    records = {CHANGELOG: batch(0, 1, 2)}
    consumer = consumer_with(monkeypatch, records, flow_active=True)
    got, _ = await consumer._wait_next_records(1.0)
    assert got is records and consumer.seeks == []


def test_a_negative_seek_reads_the_partition_from_its_start() -> None:
    """Faust's standby recovery can ask for offset -2; aiokafka would raise and crash the
    worker (seen in ``bench/standby.py`` at 100,000 rows with a standby)."""
    a, b, c = TP("t", 0), TP("t", 1), TP("t", 2)
    assert seekable({a: -2, b: None, c: 41}) == {a: 0, b: 0, c: 41}
