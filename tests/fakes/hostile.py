"""A producer that writes what aiokafka's own producer refuses to: header names of any bytes.

The Kafka protocol types a header name as a string, but the broker stores whatever bytes a
client sends; Java's and librdkafka's clients can write any. aiokafka's pure-Python batch
builder encodes each name with ``name.encode("utf-8")``, so a ``str`` whose ``encode`` returns
the raw bytes gets them written as they are.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from aiokafka import AIOKafkaProducer
from aiokafka.producer import message_accumulator
from aiokafka.producer import producer as producer_module
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy


class RawName(str):
    """A header name that encodes to exactly ``raw``."""

    raw: bytes

    def __new__(cls, raw: bytes) -> RawName:
        name = super().__new__(cls, raw.decode("latin-1"))
        name.raw = raw
        return name

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return self.raw


@contextlib.contextmanager
def python_builder() -> Iterator[None]:
    """While active, producers build batches with aiokafka's pure-Python builder."""
    modules = (message_accumulator, producer_module)
    saved = [module.DefaultRecordBatchBuilder for module in modules]
    for module in modules:
        module.DefaultRecordBatchBuilder = _DefaultRecordBatchBuilderPy
    try:
        yield
    finally:
        for module, builder in zip(modules, saved, strict=True):
            module.DefaultRecordBatchBuilder = builder


async def send_raw(
    bootstrap: str,
    topic: str,
    records: list[tuple[bytes | None, bytes | None, list[tuple[bytes, bytes | None]]]],
) -> None:
    """Produce ``(key, value, [(raw header name, value)])`` records, one batch each."""
    with python_builder():
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
        await producer.start()
        try:
            for key, value, headers in records:
                await producer.send_and_wait(
                    topic, value, key=key, headers=[(RawName(n), v) for n, v in headers]
                )
        finally:
            await producer.stop()
