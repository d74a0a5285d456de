"""The limit: the least a Python service can do per request on this broker.

    python -m bench.echo_raw BOOTSTRAP IN_TOPIC OUT_TOPIC GROUP

A raw ``aiokafka`` consumer in a consumer group reads batches (``getmany``), parses each value
with orjson, and produces a reply of the same shape and size as the OTP service's generate
reply (``processInstanceId``, ``clientId``, ``channel``, ``otpSent``, ``error``), keyed by
``processInstanceId`` and carrying the request's headers, with a lingering producer. No
framework, no state, no delivery: what is left is Kafka client work and JSON.

Runs until SIGTERM/SIGINT; offsets are auto-committed every second (like Faust's
``broker_commit_interval`` in ``app/main.py``).
"""

from __future__ import annotations

import asyncio
import signal
import sys

import orjson
import uvloop
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from app.core.partitions import Partitioner
from bench import service_settings

MAX_RECORDS = 1000


async def run(bootstrap: str, in_topic: str, out_topic: str, group: str, linger_ms: int) -> None:
    consumer = AIOKafkaConsumer(
        in_topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=True,
        auto_commit_interval_ms=1000,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=linger_ms, partitioner=Partitioner()
    )
    await producer.start()
    await consumer.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=MAX_RECORDS)
            for records in batches.values():
                for record in records:
                    request = orjson.loads(record.value)
                    pid = request["processInstanceId"]
                    reply = {
                        "processInstanceId": pid,
                        "clientId": request.get("clientId"),
                        "channel": request.get("channel"),
                        "otpSent": True,
                        "error": None,
                    }
                    await producer.send(
                        out_topic,
                        orjson.dumps(reply),
                        key=str(pid).encode(),
                        headers=list(record.headers),
                    )
    finally:
        await consumer.stop()
        await producer.stop()


def main() -> None:
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    shared = service_settings()
    if shared.event_loop == "uvloop":
        uvloop.install()
    asyncio.run(run(*sys.argv[1:5], linger_ms=shared.producer_linger_ms))


if __name__ == "__main__":
    main()
