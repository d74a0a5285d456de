"""``make soak``: minutes of generate + validate against one worker; memory, table, lag, answers.

    .venv/bin/python bench/soak.py [--minutes 10] [--rate 200] [--step-seconds 30]

One worker (the bench broker, the counting sinks of ``make bench``) is offered ``--rate``
requests per second for ``--minutes``: half generate+MAIL for fresh identifiers, half validate
(one wrong guess each, as ``make bench`` does) for the identifiers generated the step before.
Codes live 60 s, the send window is 60 s and the sweep runs every 10 s, so after the first
minutes rows are deleted as fast as they are made: the ``otps`` table must stop growing.

Each step of ``--step-seconds`` records the worker's RSS (``/proc``), its Python heap (pymalloc
blocks and objects the collector tracks, from ``bench/heap_probe``: a growing RSS over a flat
heap is native memory), its ``otp_codes`` and ``otp_consumer_lag`` gauges, and the step's
answers and p99. At the end: RSS after the warm-up (the first minute) against the last step
(flat within 10%), the table's largest size in the second half against the first's, the lag at
the end, and whether every request was answered. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import harness  # noqa: E402
from bench.run import WRONG_CODE, _gen_ok, _validate_ok  # noqa: E402
from devtools.support import SEED_MAIL, Api, Worker, metric_total  # noqa: E402

SOAK_ENV = {
    "OTP_EXPIRE_SECONDS": "60",
    "OTP_SEND_WINDOW_SECONDS": "60",
    "OTP_SWEEP_INTERVAL_SECONDS": "10",
}


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def gauges(api: Api) -> dict[str, float]:
    status, body = await api.call("GET", "/metrics")
    text = body.decode() if status == 200 else ""
    return {name: metric_total(text, name) for name in ("otp_codes", "otp_consumer_lag")}


def generate_target(run_id: str, topics: dict[str, str], generated: list[str]) -> harness.Target:
    """Generates for fresh identifiers; each one made is appended to ``generated``."""

    def client(pid: int) -> str:
        name = f"soak-{pid}"
        generated.append(name)
        return name

    return harness.Target(
        "generate+MAIL",
        topics["KAFKA_TOPIC_OTP_GENERATE_IN"],
        topics["KAFKA_TOPIC_OTP_GENERATE_OUT"],
        harness.generate_request(run_id, "MAIL", client),
        _gen_ok,
    )


def validate_target(run_id: str, topics: dict[str, str], clients: list[str]) -> harness.Target:
    queue = iter(clients)

    def make(pid: int) -> harness.Request:
        body = {
            "processInstanceId": pid,
            "clientId": next(queue),
            "channel": "MAIL",
            "otp": WRONG_CODE,
        }
        return str(pid).encode(), json.dumps(body).encode(), harness.engine_headers(run_id, pid)

    return harness.Target(
        "validate",
        topics["KAFKA_TOPIC_OTP_VALIDATE_IN"],
        topics["KAFKA_TOPIC_OTP_VALIDATE_OUT"],
        make,
        _validate_ok,
    )


def heap(path: Path, pid: int) -> dict[str, int | None]:
    """The worker's latest heap probe (``bench/heap_probe``): Python's share of its memory.
    Lines of other pids are its render pool's children."""
    try:
        lines = [json.loads(line) for line in path.read_text().splitlines()]
    except (FileNotFoundError, ValueError):
        lines = []
    mine = [line for line in lines if line.get("pid") == pid]
    if not mine:
        return {"pymalloc_blocks": None, "gc_objects": None}
    return {k: mine[-1][k] for k in ("pymalloc_blocks", "gc_objects")}


async def soak(args: argparse.Namespace, procs: harness.Processes, bootstrap: str) -> dict:
    run_id = harness.new_run_id()
    topics = harness.run_topics(run_id)
    work = ROOT / ".local" / "bench" / f"soak-{run_id}"
    probe = work / "heap-probe.jsonl"
    sinks = harness.start_sinks(procs, work)
    [worker] = harness.start_otp_workers(
        procs,
        work,
        1,
        bootstrap=bootstrap,
        topics=topics,
        partitions=args.partitions,
        sinks=sinks,
        sms=False,
        extra_env={
            **SOAK_ENV,
            "PYTHONPATH": str(ROOT / "bench" / "heap_probe"),
            "HEAP_PROBE_FILE": str(probe),
            "HEAP_PROBE_SECONDS": str(min(10.0, args.step_seconds)),
        },
    )
    await worker.wait_ready(timeout=180)
    api = Api(worker.url)
    status, body = await api.call("POST", "/api/template", SEED_MAIL)
    assert status == 201, body
    driver = harness.Driver(bootstrap)
    await driver.start(
        [topics["KAFKA_TOPIC_OTP_GENERATE_OUT"], topics["KAFKA_TOPIC_OTP_VALIDATE_OUT"]],
        args.partitions,
    )
    steps = []
    try:
        generated: list[str] = []
        generate = generate_target(run_id, topics, generated)
        half = args.rate / 2
        await driver.warm_up(generate, 100)
        # A first step of generates only: each step then validates the one before.
        await driver.fixed_rate(generate, half, args.step_seconds)
        began = time.monotonic()
        while time.monotonic() - began < args.minutes * 60:
            previous, generated[:] = list(generated), []
            gen, val = await asyncio.gather(
                driver.fixed_rate(generate, half, args.step_seconds),
                driver.fixed_rate(
                    validate_target(run_id, topics, previous), half, args.step_seconds
                ),
            )
            assert worker.proc is not None
            python = heap(probe, worker.proc.pid)
            steps.append(step_record(worker, began, gen, val, await gauges(api), python))
            print(json.dumps(steps[-1]), flush=True)
    finally:
        await driver.stop()
    shutil.rmtree(work, ignore_errors=True)
    return summary(args, steps)


def step_record(
    worker: Worker, began: float, gen: dict, val: dict, metrics: dict, python: dict
) -> dict:
    assert worker.proc is not None
    return {
        "t_s": round(time.monotonic() - began),
        "rss_mib": round(rss_mib(worker.proc.pid), 1),
        **python,
        "otp_codes": int(metrics["otp_codes"]),
        "lag": int(metrics["otp_consumer_lag"]),
        "generate": {k: gen[k] for k in ("requests", "completed", "failed", "missing", "p99_ms")},
        "validate": {k: val[k] for k in ("requests", "completed", "failed", "missing", "p99_ms")},
    }


def summary(args: argparse.Namespace, steps: list[dict]) -> dict:
    warm = next((s for s in steps if s["t_s"] >= 60), steps[0])
    half = len(steps) // 2
    first, second = steps[:half] or steps, steps[half:] or steps
    kinds = ("generate", "validate")
    unanswered = sum(s[k]["missing"] + s[k]["failed"] for s in steps for k in kinds)
    rss_growth = steps[-1]["rss_mib"] / warm["rss_mib"] - 1
    return {
        "minutes": args.minutes,
        "offered_rps": args.rate,
        "requests": sum(s[k]["requests"] for s in steps for k in kinds),
        "unanswered_or_failed": unanswered,
        "rss_after_warmup_mib": warm["rss_mib"],
        "rss_at_end_mib": steps[-1]["rss_mib"],
        "rss_growth": round(rss_growth, 3),
        "rss_flat_within_10pct": abs(rss_growth) <= 0.10,
        "otp_codes_max_first_half": max(s["otp_codes"] for s in first),
        "otp_codes_max_second_half": max(s["otp_codes"] for s in second),
        "lag_at_end": steps[-1]["lag"],
        "steps": steps,
    }


async def main_async(args: argparse.Namespace) -> None:
    with harness.broker_for(args) as bootstrap:
        procs = harness.Processes()
        try:
            print(json.dumps(await soak(args, procs, bootstrap), indent=2))
        finally:
            procs.stop_all()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--rate", type=float, default=200, help="requests/s, half of them validates")
    p.add_argument("--step-seconds", type=float, default=30)
    p.add_argument("--partitions", type=int, default=8)
    harness.add_broker_options(p)
    asyncio.run(main_async(p.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
