"""Measure the OTP generate+MAIL pipeline end to end on this machine.

    .venv/bin/python bench/otp_mail.py [--requests 1000] [--rate 0] [--partitions 8]

Starts (or reuses) the local broker on its own port, a real SMTP sink process (the mail
catcher, keeping messages in memory only) and one worker process; creates the seed's
``otpMail`` template over REST; then produces ``--requests`` generate requests, each for its own
``clientId``, and reads the replies. ``--rate 0`` sends as fast as possible (saturation);
``--rate R`` sends on a fixed schedule and measures each latency from the request's *scheduled*
time, so a stalled pipeline cannot hide its backlog (no coordinated omission).

Prints requests per second (first send to last reply) and the latency percentiles from request
produced to reply consumed, and checks that every reply is ``otpSent: true``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # noqa: E402

from app import codec  # noqa: E402
from tests.support import Api, Worker, free_port, unique, worker_env  # noqa: E402

SEED_MAIL = codec.loads((ROOT / "examples" / "otpMail.json").read_bytes())
SINK = """
import sys, time, signal
sys.path.insert(0, {scripts!r})
from mail_catcher import MailCatcher
sink = MailCatcher(port={port}, directory=None).start()
def stop(*_):
    print(len(sink.messages), flush=True)
    sink.stop()
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
while True:
    time.sleep(1)
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


BROKER_DIR = os.environ.get("BENCH_KAFKA_DATA_DIR", str(ROOT / ".local" / "kafka-bench"))


def ensure_broker(port: int) -> tuple[str, bool]:
    env = {
        **os.environ,
        "KAFKA_PORT": str(port),
        "KAFKA_DATA_DIR": BROKER_DIR,
    }
    running = (
        subprocess.run(
            [ROOT / "scripts" / "kafka-local", "status"], env=env, capture_output=True
        ).returncode
        == 0
    )
    if not running:
        subprocess.run([ROOT / "scripts" / "kafka-local", "start"], env=env, check=True)
    return f"127.0.0.1:{port}", not running


async def drive(
    bootstrap: str, topics: dict[str, str], requests: int, rate: float
) -> dict[str, float]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=2)
    consumer = AIOKafkaConsumer(
        topics["KAFKA_TOPIC_OTP_GENERATE_OUT"],
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="latest",
    )
    await producer.start()
    await consumer.start()
    await consumer.getmany(timeout_ms=500)  # pin the "latest" position before sending
    sent_at: dict[int, float] = {}
    latencies: list[float] = []
    failures: list[dict] = []

    async def produce() -> None:
        start = time.perf_counter()
        for i in range(requests):
            scheduled = start + i / rate if rate else time.perf_counter()
            if rate:
                delay = scheduled - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            sent_at[i] = scheduled
            request = {
                "processInstanceId": i,
                "templateName": "otpMail",
                "channel": "MAIL",
                "recipient": f"user{i}@example.com",
                "clientId": f"bench-{i}",
            }
            await producer.send(
                topics["KAFKA_TOPIC_OTP_GENERATE_IN"], codec.dumps(request), key=str(i).encode()
            )
        await producer.flush()

    async def collect() -> float:
        deadline = time.monotonic() + 120 + (requests / rate if rate else 0)
        while len(latencies) + len(failures) < requests and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            now = time.perf_counter()
            for records in batches.values():
                for record in records:
                    reply = codec.loads(record.value)
                    if reply["otpSent"]:
                        latencies.append(now - sent_at[reply["processInstanceId"]])
                    else:
                        failures.append(reply)
        return time.perf_counter()

    began = time.perf_counter()
    _, finished = await asyncio.gather(produce(), collect())
    await producer.stop()
    await consumer.stop()
    if failures or len(latencies) < requests:
        raise SystemExit(f"{len(latencies)}/{requests} sent; failures: {failures[:3]}")
    ms = [v * 1000 for v in latencies]
    return {
        "requests": requests,
        "offered_rps": rate,
        "rps": requests / (finished - began),
        "p50_ms": statistics.median(ms),
        "p95_ms": percentile(ms, 95),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument(
        "--rate", type=float, default=0.0, help="requests/s; 0 = as fast as possible"
    )
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument(
        "--kafka-port", type=int, default=int(os.environ.get("BENCH_KAFKA_PORT", "19192"))
    )
    args = parser.parse_args()

    bootstrap, started = ensure_broker(args.kafka_port)
    work = Path(tempfile.mkdtemp(prefix="otp-bench-"))
    smtp_port = free_port()
    sink = subprocess.Popen(
        [sys.executable, "-c", SINK.format(scripts=str(ROOT / "scripts"), port=smtp_port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    suffix = unique("bench")
    env = worker_env(
        bootstrap, suffix, smtp_port, TOPIC_PARTITIONS=str(args.partitions), LOG_LEVEL="WARNING"
    )
    worker = Worker(env=env, data_dir=work / "data", log_path=work / "worker.log").start()
    try:
        await worker.wait_ready()
        status, body = await Api(worker.url).call("POST", "/api/template", SEED_MAIL)
        assert status == 201, body
        from tests.support import topic_env

        result = await drive(bootstrap, topic_env(suffix), args.requests, args.rate)
    finally:
        worker.stop()
        sink.terminate()
        mails = (sink.communicate(timeout=10)[0] or "").strip()
        if started:
            subprocess.run(
                [ROOT / "scripts" / "kafka-local", "stop"],
                env={
                    **os.environ,
                    "KAFKA_PORT": str(args.kafka_port),
                    "KAFKA_DATA_DIR": BROKER_DIR,
                },
                check=False,
            )
        shutil.rmtree(work, ignore_errors=True)
    mode = f"fixed {args.rate:g} req/s" if args.rate else "saturation"
    print(
        f"generate+MAIL, 1 worker, {args.partitions} partitions, {mode}: "
        f"{result['requests']} requests, {mails} mails received by the SMTP server"
    )
    print(
        f"  throughput {result['rps']:.0f} req/s | latency p50 {result['p50_ms']:.1f} ms, "
        f"p95 {result['p95_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
        f"max {result['max_ms']:.1f} ms"
    )


if __name__ == "__main__":
    asyncio.run(main())
