"""Measure the repartition window: how long ``python -m app repartition`` keeps workers stopped.

    .venv/bin/python bench/repartition.py [--rows 100000] [--from 4] [--to 8]

Starts (or reuses) the bench broker, creates a fresh app's topics with ``--from`` partitions,
writes ``--rows`` live rows straight into each of the ``otps``, ``receivers`` and ``send_log``
changelogs (the rows a deployment with that many live codes holds; real row shapes and sizes),
then times the command's own function moving them to ``--to`` partitions. Prints one JSON
document; the topics are deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aiokafka import AIOKafkaProducer  # noqa: E402

from app import codec  # noqa: E402
from app.core.otp import OtpRecord  # noqa: E402
from app.core.partitions import partition_of  # noqa: E402
from app.kafka_admin import ensure_topics  # noqa: E402
from app.repartition import repartition  # noqa: E402
from app.settings import Settings  # noqa: E402
from bench import harness  # noqa: E402
from tables import changelog_topic, topic_specs  # noqa: E402


def rows(table: str, n: int, now: float) -> list[tuple[bytes, bytes]]:
    out = []
    for i in range(n):
        if table == "otps":
            record = OtpRecord(
                digest=f"{i:064x}",
                channel="MAIL",
                process_instance_id=1_000_000 + i,
                issued_at=now,
                expires_at=now + 600,
                sends=(now,),
                history=((f"bench.in/{i % 8}/{i}", "sent"),),
                receiver=f"person{i}@example.com",
                facts=((f"bench.in/{i % 8}/{i}", repr(now + 600)),),
            )
            out.append((f"client-{i}".encode(), codec.dumps(record.to_dict())))
        elif table == "receivers":
            quota = {"n": [now], "h": [[f"bench.in/{i % 8}/{i}", "ok"]]}
            out.append((f"{i:032x}".encode(), codec.dumps(quota)))
        else:
            entry = {
                "id": f"{i:024x}",
                "receiver": f"person{i}@example.com",
                "channel": "MAIL",
                "at": "2026-12-01T12:00:00.000Z",
                "last": "2026-12-01T12:00:00.000Z",
                "status": "sent",
                "clientId": f"client-{i}",
                "templateName": "otpMail",
                "events": [{"eventId": f"{i:032x}", "type": "otp.sent", "status": "sent"}],
            }
            out.append(
                (f"person{i}@example.com".encode(), codec.dumps({"entries": {entry["id"]: entry}}))
            )
    return out


async def measure(args: argparse.Namespace, bootstrap: str) -> dict:
    run_id = harness.new_run_id()
    env = {
        **harness.run_topics(run_id),
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "OTP_HMAC_SECRET": "bench-secret-0123456789",
        "NOTIFY_API_TOKEN": "bench-token-0123456789",
        "TOPIC_PARTITIONS": str(args.from_partitions),
    }
    settings = Settings.from_env(env)
    await ensure_topics(bootstrap, topic_specs(settings))
    now = time.time()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    await producer.start()
    try:
        for table in ("otps", "receivers", "send_log"):
            topic = changelog_topic(settings, table)
            for key, value in rows(table, args.rows, now):
                partition = partition_of(key, args.from_partitions)
                await producer.send(topic, value, key=key, partition=partition)
        await producer.flush()
    finally:
        await producer.stop()
    try:
        started = time.perf_counter()
        report = await repartition(settings, args.to_partitions, say=lambda line: None)
        seconds = time.perf_counter() - started
    finally:
        await harness.delete_topics_containing(bootstrap, run_id)
    live = sum(report.live.values())
    return {
        "rows_per_table": args.rows,
        "from": args.from_partitions,
        "to": args.to_partitions,
        "live": report.live,
        "moved": report.moved,
        "seconds": round(seconds, 1),
        "live_rows_per_second": round(live / seconds),
    }


async def main_async(args: argparse.Namespace) -> None:
    with harness.broker_for(args) as bootstrap:
        print(json.dumps(await measure(args, bootstrap), indent=2))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=100_000, help="live rows in each of three tables")
    p.add_argument("--from", dest="from_partitions", type=int, default=4)
    p.add_argument("--to", dest="to_partitions", type=int, default=8)
    harness.add_broker_options(p)
    asyncio.run(main_async(p.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
