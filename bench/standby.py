"""Measure what a standby buys: kill -9 to the survivor answering for the dead worker's codes.

    .venv/bin/python bench/standby.py [--rows 10000,100000] [--standbys 0,1] [--partitions 8]

For each row count and each ``TABLE_STANDBY_REPLICAS`` value: a fresh app whose ``otps``
changelog holds that many live codes (written straight to the changelog, code ``123456`` for
every identifier), two workers started together (the time until both answer ``/ready`` is the
cold recovery of all rows, split between them), then a kill -9 of the first and one validate
per partition, sent at once. The slowest answer is the dead worker's share: the broker's
session timeout (``broker_session_timeout``, 10 s), the rebalance, and the survivor reading the
moved partitions' changelog, unless a standby already has them. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aiokafka import AIOKafkaProducer  # noqa: E402

from app import codec  # noqa: E402
from app.core import otp  # noqa: E402
from app.core.otp import OtpRecord  # noqa: E402
from app.core.partitions import partition_of  # noqa: E402
from app.kafka_admin import ensure_topics  # noqa: E402
from app.settings import Settings  # noqa: E402
from bench import harness  # noqa: E402
from devtools.support import SECRET, TOKEN, Collector, Kafka  # noqa: E402
from tables import changelog_topic, topic_specs  # noqa: E402

CODE = "123456"


async def write_codes(settings: Settings, rows: int, partitions: int) -> None:
    now = time.time()
    topic = changelog_topic(settings, "otps")
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, linger_ms=20)
    await producer.start()
    try:
        for i in range(rows):
            client = f"sb-{i}"
            record = OtpRecord(
                digest=otp.digest(SECRET.encode(), client, "MAIL", CODE),
                channel="MAIL",
                process_instance_id=i,
                issued_at=now,
                expires_at=now + 3600,
                sends=(now,),
                receiver=f"{client}@example.com",
            )
            key = client.encode()
            await producer.send(
                topic,
                codec.dumps(record.to_dict()),
                key=key,
                partition=partition_of(key, partitions),
            )
        await producer.flush()
    finally:
        await producer.stop()


def one_per_partition(rows: int, partitions: int) -> dict[int, str]:
    """An identifier of each ``otp-commands`` partition, from the end of the range."""
    chosen: dict[int, str] = {}
    for i in reversed(range(rows)):
        chosen.setdefault(partition_of(f"sb-{i}".encode(), partitions), f"sb-{i}")
        if len(chosen) == partitions:
            break
    return chosen


@dataclass
class LiveApp:
    """A fresh app (topics, ``APP_ID``) whose ``otps`` changelog holds live codes, with the
    bench's sinks started; its processes and topics go away with :func:`live_app`."""

    topics: dict[str, str]
    work: Path
    procs: harness.Processes
    sinks: harness.Sinks


@contextlib.asynccontextmanager
async def live_app(
    bootstrap: str, rows: int, partitions: int, label: str
) -> AsyncIterator[LiveApp]:
    run_id = harness.new_run_id()
    topics = harness.run_topics(run_id)
    env = {
        **topics,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "OTP_HMAC_SECRET": SECRET,
        "NOTIFY_API_TOKEN": TOKEN,
        "TOPIC_PARTITIONS": str(partitions),
    }
    settings = Settings.from_env(env)
    await ensure_topics(bootstrap, topic_specs(settings))
    await write_codes(settings, rows, partitions)
    work = ROOT / ".local" / "bench" / f"{label}-{run_id}"
    procs = harness.Processes()
    try:
        yield LiveApp(topics, work, procs, harness.start_sinks(procs, work))
    finally:
        procs.stop_all()
        await harness.delete_topics_containing(bootstrap, run_id)
        shutil.rmtree(work, ignore_errors=True)


async def measure(bootstrap: str, rows: int, standbys: int, partitions: int) -> dict:
    async with live_app(bootstrap, rows, partitions, "standby") as live:
        topics, procs, work, sinks = live.topics, live.procs, live.work, live.sinks
        started = time.monotonic()
        workers = harness.start_otp_workers(
            procs,
            work,
            2,
            bootstrap=bootstrap,
            topics=topics,
            partitions=partitions,
            sinks=sinks,
            sms=False,
            extra_env={"TABLE_STANDBY_REPLICAS": str(standbys)},
        )
        await asyncio.gather(*(w.wait_ready(timeout=600) for w in workers))
        ready = time.monotonic() - started
        await asyncio.sleep(5)  # standbys catch up with the changelog's end
        chosen = one_per_partition(rows, partitions)
        answered: dict[int, float] = {}
        async with (
            Kafka(bootstrap) as kafka,
            Collector(bootstrap, topics["KAFKA_TOPIC_OTP_VALIDATE_OUT"]) as replies,
        ):
            assert workers[0].proc is not None
            os.killpg(workers[0].proc.pid, signal.SIGKILL)
            killed = time.monotonic()
            for partition, client in chosen.items():
                request = {"processInstanceId": partition, "clientId": client, "otp": CODE}
                await kafka.send(
                    topics["KAFKA_TOPIC_OTP_VALIDATE_IN"], {**request, "channel": "MAIL"}
                )
            while len(answered) < len(chosen) and time.monotonic() - killed < 600:
                for record in list(replies.records):
                    reply = codec.loads(record.value)
                    assert reply["otpValid"], reply
                    answered.setdefault(reply["processInstanceId"], time.monotonic() - killed)
                await asyncio.sleep(0.05)
        return {
            "rows": rows,
            "standby_replicas": standbys,
            "partitions": partitions,
            "cold_start_both_ready_s": round(ready, 1),
            "kill_to_first_answer_s": round(min(answered.values()), 2),
            "kill_to_last_answer_s": round(max(answered.values()), 2),
            "answered": len(answered),
        }


async def main_async(args: argparse.Namespace) -> None:
    results = []
    with harness.broker_for(args) as bootstrap:
        for rows in (int(r) for r in args.rows.split(",")):
            for standbys in (int(s) for s in args.standbys.split(",")):
                result = await measure(bootstrap, rows, standbys, args.partitions)
                print(json.dumps(result), flush=True)
                results.append(result)
    print(json.dumps(results, indent=2))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", default="10000,100000", help="live codes, comma-separated")
    p.add_argument("--standbys", default="0,1", help="TABLE_STANDBY_REPLICAS values")
    p.add_argument("--partitions", type=int, default=8)
    harness.add_broker_options(p)
    asyncio.run(main_async(p.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
