"""Measure the OTP generate+MAIL pipeline alone, end to end on this machine.

    .venv/bin/python bench/otp_mail.py [--requests 1000] [--rate 0] [--partitions 8] [--workers 1]

A quick look at one pipeline; ``make bench`` (``bench/run.py``) is the full run with baselines.
Starts (or reuses) the bench broker on its own port, the counting SMTP sink process
(``bench/sinks.py``) and the worker process(es); creates the seed's ``otpMail`` template over
REST; warms the pipeline up; then produces ``--requests`` generate requests, each for its own
``clientId``, and reads the replies. ``--rate 0`` sends as fast as possible (saturation);
``--rate R`` sends on a fixed schedule and measures each latency from the request's *scheduled*
time, so a stalled pipeline cannot hide its backlog (no coordinated omission).

Prints requests per second (first send to last reply), the latency percentiles from request
produced to reply consumed, and the workers' CPU per request and cores while the requests ran
(the render children not included), the part of it in the main thread (Faust's event loop;
the rest is mostly aiokafka's consumer thread), and checks that every reply is ``otpSent: true``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import harness  # noqa: E402


async def measure(args: argparse.Namespace, procs: harness.Processes, bootstrap: str) -> dict:
    run_id = harness.new_run_id()
    topics = harness.run_topics(run_id)
    work = ROOT / ".local" / "bench" / f"otp-mail-{run_id}"
    driver = harness.Driver(bootstrap)
    try:
        sinks = harness.start_sinks(procs, work)
        workers = harness.start_otp_workers(
            procs,
            work,
            args.workers,
            bootstrap=bootstrap,
            topics=topics,
            partitions=args.partitions,
            sinks=sinks,
            sms=False,
        )
        await asyncio.gather(*(w.wait_ready(timeout=180) for w in workers))
        await harness.create_templates(workers[0], [harness.SEED_MAIL])
        await driver.start([topics["KAFKA_TOPIC_OTP_GENERATE_OUT"]], args.partitions)
        target = harness.Target(
            "generate+MAIL",
            topics["KAFKA_TOPIC_OTP_GENERATE_IN"],
            topics["KAFKA_TOPIC_OTP_GENERATE_OUT"],
            harness.generate_request(run_id, "MAIL", lambda pid: f"bench-{pid}"),
            lambda reply: reply.get("otpSent") is True,
        )
        warm, rounds = await driver.warm_up(
            target, min(200, args.requests), retry_on=("not found",)
        )
        print(f"warm-up: {rounds} round(s)", flush=True)
        if warm.failures:
            raise SystemExit(f"warm-up failed (logs in {work}): {warm.failures[:3]}")
        meter = harness.CpuMeter(
            lambda: {c.name: c.pid for c in procs.children if c.name.startswith("worker")},
            main_threads=True,
        )
        before = meter.snapshot()
        if args.rate:
            seconds = args.requests / args.rate
            result = await driver.fixed_rate(target, args.rate, seconds)
            result["rps"] = result["achieved_rps"]
        else:
            result = await driver.saturate(target, driver.pids(args.requests))
        after = meter.snapshot()
        spent = harness.CpuMeter.cpu_seconds(before, after)
        used = sum(v for role, v in spent.items() if not role.endswith("/main"))
        main = sum(v for role, v in spent.items() if role.endswith("/main"))
        result["worker_cores"] = round(used / (after["t"] - before["t"]), 2)
        per_request = 1000 / result["completed"] if result["completed"] else None
        result["worker_cpu_ms_per_request"] = round(used * per_request, 2) if per_request else None
        result["worker_main_thread_ms_per_request"] = (
            round(main * per_request, 2) if per_request else None
        )
        result["mails"] = (await sinks.stats())["mails"] - len(warm.latencies)
        shutil.rmtree(work, ignore_errors=True)  # logs are kept when something failed
        return result
    finally:
        await driver.stop()
        await asyncio.to_thread(procs.stop_all)
        try:
            await asyncio.wait_for(harness.delete_topics_containing(bootstrap, run_id), 30)
        except Exception as exc:
            print(f"could not delete the run's topics: {exc}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument(
        "--rate", type=float, default=0.0, help="requests/s; 0 = as fast as possible"
    )
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--kafka-port",
        type=int,
        default=int(os.environ.get("BENCH_KAFKA_PORT", harness.DEFAULT_KAFKA_PORT)),
    )
    args = parser.parse_args()

    procs = harness.Processes()
    broker = harness.Broker(
        args.kafka_port, os.environ.get("BENCH_KAFKA_DATA_DIR", harness.DEFAULT_KAFKA_DATA_DIR)
    )
    try:
        broker.ensure()
        result = asyncio.run(measure(args, procs, broker.bootstrap))
    except KeyboardInterrupt:
        raise SystemExit("interrupted") from None
    finally:
        procs.stop_all()
        broker.stop_if_started()
    if result["failed"] or result["missing"]:
        raise SystemExit(
            f"{result['completed']}/{args.requests} sent; {result['missing']} missing; "
            f"failures: {result['first_failures']}"
        )
    mode = f"fixed {args.rate:g} req/s" if args.rate else "saturation"
    print(
        f"generate+MAIL, {args.workers} worker(s), {args.partitions} partitions, {mode}: "
        f"{args.requests} requests, {result['mails']} mails received by the SMTP server"
    )
    print(
        f"  throughput {result['rps']:.0f} req/s | latency p50 {result['p50_ms']:.1f} ms, "
        f"p95 {result['p95_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
        f"max {result['max_ms']:.1f} ms"
    )
    print(
        f"  worker CPU {result['worker_cpu_ms_per_request']} ms per request, "
        f"{result['worker_cores']} of a core; {result['worker_main_thread_ms_per_request']} ms of "
        "it in the main thread (Faust's event loop), the rest mostly in aiokafka's consumer thread"
    )


if __name__ == "__main__":
    main()
