"""Measure the send log: query times at 100,000 logged deliveries, and the retention sweep.

    .venv/bin/python bench/sendlog.py [--entries 100000] [--receivers 20000] [--partitions 8]

Starts (or reuses) the bench broker and one worker, writes ``--entries`` delivery events
(``otp.sent``, one entry each, spread over ``--receivers`` receivers; a tenth of them dated past
``SEND_LOG_RETENTION_DAYS``) straight onto the events topic, waits until the log holds them,
then times each query kind over HTTP (p50/p95 of many calls), what ``GET /health`` waits meanwhile
(every 20 ms while the scanning queries run), and the sweep that deletes the old tenth. Prints
one JSON document.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from aiokafka import AIOKafkaProducer  # noqa: E402

from app import codec  # noqa: E402
from app.flows.events import entry_id  # noqa: E402
from app.records import iso_utc  # noqa: E402
from bench import harness  # noqa: E402
from devtools.support import Api, Worker, metric_total  # noqa: E402

SWEEP_SECONDS = 5
PROBE_SECONDS = 0.02


def events(n: int, receivers: int, now: float) -> list[tuple[bytes, dict]]:
    old = now - 40 * 86400
    out = []
    for i in range(n):
        receiver = f"person{i % receivers}@example.com"
        at = old + i if i % 10 == 0 else now - (n - i) * 0.01
        out.append(
            (
                receiver.encode(),
                {
                    "eventId": f"ev{i}",
                    "type": "otp.sent",
                    "at": iso_utc(at),
                    "entryId": entry_id("bench", i),
                    "processInstanceId": 1_000_000 + i,
                    "clientId": f"client{i % (receivers * 2)}",
                    "identifier": None,
                    "templateName": f"template{i % 5}",
                    "language": "en",
                    "channel": "MAIL",
                    "receiver": receiver,
                    "provider": "smtp",
                    "providerMessageId": None,
                    "status": "sent",
                    "error": None,
                },
            )
        )
    return out


async def timed(api: Api, query: str) -> tuple[float, dict]:
    started = time.perf_counter()
    status, body = await api.call("GET", f"/api/notifications?{query}")
    assert status == 200, body
    return (time.perf_counter() - started) * 1000, body


async def probe_while(api: Api, done: asyncio.Event, samples: list[float]) -> None:
    """``GET /health`` every 20 ms until ``done``: how long the worker's event loop keeps a
    request waiting while the scan queries run."""
    while not done.is_set():
        started = time.perf_counter()
        status, _ = await api.call("GET", "/health")
        assert status == 200, status
        samples.append(time.perf_counter() - started)
        await asyncio.sleep(PROBE_SECONDS)


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "p50_ms": round(harness.percentile(ordered, 50), 1),
        "p95_ms": round(harness.percentile(ordered, 95), 1),
    }


async def measure(args: argparse.Namespace, procs: harness.Processes, bootstrap: str) -> dict:
    run_id = harness.new_run_id()
    topics = harness.run_topics(run_id)
    work = ROOT / ".local" / "bench" / f"sendlog-{run_id}"
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
        extra_env={"SEND_LOG_SWEEP_INTERVAL_SECONDS": "3600"},
    )
    await worker.wait_ready(timeout=180)
    api = Api(worker.url)
    now = time.time()
    batch = events(args.entries, args.receivers, now)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    await producer.start()
    started = time.perf_counter()
    try:
        for key, value in batch:
            await producer.send(
                topics["KAFKA_TOPIC_NOTIFICATION_EVENTS"], codec.dumps(value), key=key
            )
        await producer.flush()
    finally:
        await producer.stop()
    produced = time.perf_counter() - started
    _, last = batch[-1]
    while True:  # the log has caught up when the newest entry is there (503s until then)
        status, body = await api.call(
            "GET", f"/api/notifications?receiver={last['receiver']}&limit=500"
        )
        if status == 200 and any(e["id"] == last["entryId"] for e in body["items"]):
            break
        await asyncio.sleep(1)
    caught_up = time.perf_counter() - started
    rng = random.Random(7)
    kinds: dict[str, list[float]] = {"receiver": [], "processInstanceId": [], "templateName": []}
    for _ in range(args.queries):
        ms, _ = await timed(api, f"receiver=person{rng.randrange(args.receivers)}@example.com")
        kinds["receiver"].append(ms)
    probes: list[float] = []
    scanning = asyncio.Event()
    probe = asyncio.create_task(probe_while(api, scanning, probes))
    for _ in range(max(5, args.queries // 10)):
        pid = 1_000_000 + rng.randrange(args.entries)
        ms, _ = await timed(api, f"processInstanceId={pid}")
        kinds["processInstanceId"].append(ms)
        ms, _ = await timed(api, f"templateName=template{rng.randrange(5)}&limit=50")
        kinds["templateName"].append(ms)
    scanning.set()
    await probe
    return {
        "entries": args.entries,
        "receivers": args.receivers,
        "partitions": args.partitions,
        "produce_seconds": round(produced, 1),
        "logged_seconds": round(caught_up, 1),
        "queries": {kind: summary(samples) for kind, samples in kinds.items()},
        "health_during_scans": {"n": len(probes), **harness.summarize_ms(probes)},
        "work": str(work),
        "worker": worker,
    }


async def sweep(result: dict) -> dict:
    """Restart the worker with a short sweep interval and time the deletion of the old tenth."""
    worker = result.pop("worker")
    worker.stop()
    worker.env["SEND_LOG_SWEEP_INTERVAL_SECONDS"] = str(SWEEP_SECONDS)
    worker.start()
    try:
        return await _time_sweep(worker)
    finally:
        worker.kill()


async def _time_sweep(worker: Worker) -> dict:
    await worker.wait_ready(timeout=300)
    recovered = time.perf_counter()
    old_receiver = "person0@example.com"  # event 0 (dated 40 days ago) is one of its entries
    api = Api(worker.url)
    while True:
        _, body = await timed(api, f"receiver={old_receiver}")
        ids = {e["id"] for e in body["items"]}
        if entry_id("bench", 0) not in ids:
            break
        await asyncio.sleep(0.5)
    status, metrics = await api.call("GET", "/metrics")
    swept = metric_total(metrics.decode(), "otp_send_log_swept_total") if status == 200 else None
    return {"sweep_seconds": round(time.perf_counter() - recovered, 1), "swept": swept}


async def main_async(args: argparse.Namespace) -> None:
    with harness.broker_for(args) as bootstrap:
        procs = harness.Processes()
        try:
            result = await measure(args, procs, bootstrap)
            result.update(await sweep(result))
            shutil.rmtree(result.pop("work"), ignore_errors=True)
            print(json.dumps(result, indent=2))
        finally:
            procs.stop_all()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--entries", type=int, default=100_000)
    p.add_argument("--receivers", type=int, default=20_000)
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--queries", type=int, default=200)
    harness.add_broker_options(p)
    asyncio.run(main_async(p.parse_args()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
