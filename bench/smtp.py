"""Measure the MAIL channel alone: what one mail's SMTP transaction costs this process.

    .venv/bin/python bench/smtp.py [--mails 5000] [--concurrency 16] [--pool 4] [--repeats 3]

Starts the counting sink (``bench/sinks.py``, which offers PIPELINING as production servers
do), sends ``--mails`` OTP-sized mails through ``app.channels.smtp.SmtpChannel`` with
``--concurrency`` sends in flight over ``--pool`` kept-open sessions, and prints, per round,
this process's CPU per mail (building the MIME included) and mails per second. No Kafka: the
flows around a send are ``bench/otp_mail.py``'s business.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.channels.base import Notification  # noqa: E402
from app.channels.smtp import SmtpChannel  # noqa: E402
from bench import harness  # noqa: E402


def otp_mail(n: int) -> Notification:
    return Notification(
        channel="MAIL",
        recipient=f"user{n}@example.com",
        subject="Your one-time password",
        body=f"<p>Your code is <b>{n % 1_000_000:06d}</b>. It expires in 5 minutes.</p>",
        text=f"Your code is {n % 1_000_000:06d}. It expires in 5 minutes.",
        template_name="otpMail",
        process_instance_id=n,
        headers={},
        message_key=f"bench-{n}",
    )


async def one_round(port: int, mails: int, concurrency: int, pool: int) -> tuple[float, float]:
    channel = SmtpChannel(
        host="127.0.0.1",
        port=port,
        security="none",
        username=None,
        password=None,
        from_email="otp@example.com",
        from_name="OTP",
        timeout=10,
        pool_size=pool,
        max_concurrency=concurrency,
    )
    await channel.send(otp_mail(0))  # the sessions' opening is not what is measured
    queue = iter(range(1, mails + 1))

    async def sender() -> None:
        for n in queue:
            await channel.send(otp_mail(n))

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await channel.close()
    return cpu / mails * 1000, mails / wall


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mails", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--pool", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    procs = harness.Processes()
    try:
        sinks = harness.start_sinks(procs, Path(tempfile.mkdtemp(prefix="bench-smtp-")))
        cpu, rate = [], []
        for _ in range(args.repeats):
            ms, per_second = asyncio.run(
                one_round(sinks.smtp_port, args.mails, args.concurrency, args.pool)
            )
            cpu.append(ms)
            rate.append(per_second)
            print(f"  {ms:.3f} ms of CPU per mail, {per_second:,.0f} mails/s", flush=True)
        print(
            f"MAIL channel, {args.mails} mails x {args.repeats}, {args.concurrency} in flight "
            f"on {args.pool} sessions: median {statistics.median(cpu):.3f} ms of CPU per mail, "
            f"{statistics.median(rate):,.0f} mails/s"
        )
    finally:
        procs.stop_all()


if __name__ == "__main__":
    main()
