"""Measure what the expiry sweeps cost the requests that arrive meanwhile.

    .venv/bin/python bench/sweep.py [--rows 100000] [--interval 0.02] [--seconds 40]
                                    [--sweep-every 5] [--partitions 8]

A fresh app whose ``otps`` changelog holds ``--rows`` live codes (written straight to the
changelog, as ``bench/standby.py`` does), one worker sweeping every ``--sweep-every`` seconds
(``OTP_SWEEP_INTERVAL_SECONDS``; the default of 30 s would make the run long), then a probe
that validates another stored code every ``--interval`` seconds for ``--seconds``. A sweep reads
every row of its table; whatever it holds the event loop for, every request in flight waits.
Prints the probes' median, p99 and slowest wait, and how many waited over 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import harness  # noqa: E402
from bench.rebalance import Probe, poll  # noqa: E402
from bench.standby import live_app  # noqa: E402
from devtools.support import Collector, Kafka  # noqa: E402


async def measure(bootstrap: str, args: argparse.Namespace) -> dict:
    async with live_app(bootstrap, args.rows, args.partitions, "sweep") as live:
        (worker,) = harness.start_otp_workers(
            live.procs,
            live.work,
            1,
            bootstrap=bootstrap,
            topics=live.topics,
            partitions=args.partitions,
            sinks=live.sinks,
            sms=False,
            extra_env={"OTP_SWEEP_INTERVAL_SECONDS": str(args.sweep_every)},
        )
        await worker.wait_ready(timeout=600)
        await asyncio.sleep(3)
        async with (
            Kafka(bootstrap) as kafka,
            Collector(bootstrap, live.topics["KAFKA_TOPIC_OTP_VALIDATE_OUT"]) as replies,
        ):
            topic = live.topics["KAFKA_TOPIC_OTP_VALIDATE_IN"]
            probe = Probe(kafka, topic, args.interval, args.rows, args.partitions)
            stop = asyncio.Event()
            sending = asyncio.create_task(probe.run(stop))
            await poll(probe, replies, args.seconds)
            stop.set()
            await sending
            await poll(probe, replies, 5)
        waits = sorted(probe.waits(0, float("inf")).values())
    return {
        "rows": args.rows,
        "sweep_every_s": args.sweep_every,
        "probes": len(waits),
        "median_ms": round(1000 * harness.percentile(waits, 50), 1),
        "p99_ms": round(1000 * harness.percentile(waits, 99), 1),
        "slowest_ms": round(1000 * waits[-1], 1),
        "over_100ms": sum(1 for w in waits if w > 0.1),
        "unanswered": len(probe.sent) - len(probe.answered),
        "refused": len(probe.wrong),
    }


async def main_async(args: argparse.Namespace) -> None:
    with harness.broker_for(args) as bootstrap:
        print(json.dumps(await measure(bootstrap, args)), flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=100000, help="live codes in the otps table")
    p.add_argument("--interval", type=float, default=0.02, help="seconds between probes")
    p.add_argument("--seconds", type=float, default=40.0, help="how long the probe runs")
    p.add_argument("--sweep-every", type=float, default=5.0, help="OTP_SWEEP_INTERVAL_SECONDS")
    p.add_argument("--partitions", type=int, default=8)
    harness.add_broker_options(p)
    asyncio.run(main_async(p.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
