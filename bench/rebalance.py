"""Measure a rebalance: how long answers stop when a worker joins a group, and when it leaves.

    .venv/bin/python bench/rebalance.py [--groups 1,2,3] [--rows 10000] [--partitions 8]

For each group size N: a fresh app whose ``otps`` changelog holds ``--rows`` live codes
(written straight to the changelog, as ``bench/standby.py`` does), N workers started and
ready, then a probe that sends a validate of another stored code every ``--interval``
seconds, spread over every partition. A worker N+1 is started (a join: every member stops,
the group rebalances, the new worker reads the changelog of the partitions it gets), left to
serve for ``--settle`` seconds, then stopped with SIGTERM (a leave: it finishes what it holds,
commits and leaves the group, whose members rebalance again and read back its partitions).

The figure for each event is the slowest probe sent from the event to the next one: the
longest a request waited because of that rebalance. Prints one JSON document per group size.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import codec  # noqa: E402
from app.core.partitions import partition_of  # noqa: E402
from bench import harness  # noqa: E402
from bench.standby import CODE, live_app  # noqa: E402
from devtools.support import Collector, Kafka  # noqa: E402


class Probe:
    """Validates of distinct stored codes on a fixed schedule; each answer's latency is kept."""

    def __init__(
        self, kafka: Kafka, topic: str, interval: float, rows: int, partitions: int
    ) -> None:
        self.kafka, self.topic, self.interval, self.rows = kafka, topic, interval, rows
        self.partitions = partitions
        self.sent: dict[int, float] = {}
        self.answered: dict[int, float] = {}
        self.wrong: list[dict] = []
        self.seen = 0

    async def run(self, stop: asyncio.Event) -> None:
        start = time.monotonic()
        for n in range(self.rows):
            # On the schedule, whatever the broker's answer time: no coordinated omission.
            delay = start + n * self.interval - time.monotonic()
            if delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                    return
                except TimeoutError:
                    pass
            if stop.is_set():
                return
            self.sent[n] = start + n * self.interval
            request = {"processInstanceId": n, "clientId": f"sb-{n}", "otp": CODE}
            await self.kafka.send(self.topic, {**request, "channel": "MAIL"})

    def collect(self, replies: Collector) -> None:
        now = time.monotonic()
        fresh = replies.records[self.seen :]
        self.seen += len(fresh)
        for record in fresh:
            reply = codec.loads(record.value)
            pid = reply["processInstanceId"]
            if not reply.get("otpValid"):
                self.wrong.append(reply)
            self.answered.setdefault(pid, now)

    def waits(self, since: float, until: float) -> dict[int, float]:
        """Each probe scheduled in [since, until) and how long it waited; one not answered
        yet counts as waiting until now."""
        now = time.monotonic()
        return {
            n: self.answered.get(n, now) - t for n, t in self.sent.items() if since <= t < until
        }

    def slowest(self, since: float, until: float) -> float | None:
        waits = self.waits(since, until).values()
        return round(max(waits), 2) if waits else None

    def held_up(self, since: float, until: float, over: float = 1.0) -> int:
        """How many partitions had a probe scheduled in [since, until) wait over ``over``
        seconds: the moved partitions only, or every one (the whole group paused)."""
        late = [n for n, wait in self.waits(since, until).items() if wait > over]
        return len({partition_of(f"sb-{n}".encode(), self.partitions) for n in late})

    def typical(self, until: float) -> float | None:
        waits = [
            self.answered[n] - t for n, t in self.sent.items() if t < until and n in self.answered
        ]
        return round(1000 * statistics.median(waits), 1) if waits else None


async def poll(probe: Probe, replies: Collector, seconds: float) -> None:
    """Gather answers for ``seconds``, finely enough for the latencies to be exact to 50 ms."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        probe.collect(replies)
        await asyncio.sleep(0.05)


async def measure(bootstrap: str, group: int, args: argparse.Namespace) -> dict:
    async with live_app(bootstrap, args.rows, args.partitions, "rebalance") as live:
        topics, procs, work, sinks = live.topics, live.procs, live.work, live.sinks
        common = dict(
            bootstrap=bootstrap, topics=topics, partitions=args.partitions, sinks=sinks, sms=False
        )
        members = harness.start_otp_workers(procs, work, group, **common)
        await asyncio.gather(*(w.wait_ready(timeout=600) for w in members))
        await asyncio.sleep(3)
        async with (
            Kafka(bootstrap) as kafka,
            Collector(bootstrap, topics["KAFKA_TOPIC_OTP_VALIDATE_OUT"]) as replies,
        ):
            probe = Probe(
                kafka,
                topics["KAFKA_TOPIC_OTP_VALIDATE_IN"],
                args.interval,
                args.rows,
                args.partitions,
            )
            stop = asyncio.Event()
            sending = asyncio.create_task(probe.run(stop))
            await poll(probe, replies, 5)
            joined = time.monotonic()
            (newcomer,) = harness.start_otp_workers(procs, work, 1, first=group, **common)
            ready_after = await newcomer.wait_ready(timeout=600)
            await poll(probe, replies, args.settle)
            left = time.monotonic()
            await asyncio.to_thread(newcomer.stop, 60)
            stopped_after = time.monotonic() - left
            await poll(probe, replies, args.settle)
            ended = time.monotonic()
            stop.set()
            await sending
            deadline = time.monotonic() + 120
            while len(probe.answered) < len(probe.sent) and time.monotonic() < deadline:
                await poll(probe, replies, 0.5)
        return {
            "workers_before": group,
            "rows": args.rows,
            "partitions": args.partitions,
            "probe_interval_s": args.interval,
            "typical_wait_ms": probe.typical(joined),
            "join_slowest_wait_s": probe.slowest(joined, left),
            "join_partitions_held_over_1s": probe.held_up(joined, left),
            "join_new_worker_ready_s": round(ready_after, 1),
            "leave_slowest_wait_s": probe.slowest(left, ended),
            "leave_partitions_held_over_1s": probe.held_up(left, ended),
            "leave_sigterm_to_exit_s": round(stopped_after, 1),
            "probes": len(probe.sent),
            "unanswered": len(probe.sent) - len(probe.answered),
            "refused": len(probe.wrong),
        }


async def main_async(args: argparse.Namespace) -> None:
    results = []
    with harness.broker_for(args) as bootstrap:
        for group in (int(g) for g in args.groups.split(",")):
            result = await measure(bootstrap, group, args)
            print(json.dumps(result), flush=True)
            results.append(result)
    print(json.dumps(results, indent=2))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--groups", default="1,2,3", help="workers before the join, comma-separated")
    p.add_argument("--rows", type=int, default=10000, help="live codes in the otps table")
    p.add_argument("--interval", type=float, default=0.05, help="seconds between probes")
    p.add_argument("--settle", type=float, default=25.0, help="seconds after each event")
    p.add_argument("--partitions", type=int, default=8)
    harness.add_broker_options(p)
    asyncio.run(main_async(p.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
