"""A table recovery that cannot finish ends the worker instead of holding its partitions forever.

A stall is made for real: the templates changelog gets a record in an aborted transaction, so
the partition's end offset lies past its last readable record (the abort marker is never
delivered). Faust's recovery waits for that offset without a time limit; the worker must say
so, read again, then exit with status 1 so the group can give its partitions to others.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from devtools.support import SEED_MAIL, Api, Collector, Worker, unique, worker_env
from tests.conftest import SmtpSink

pytestmark = pytest.mark.integration


async def test_stalled_recovery_exits_with_failure(
    kafka_bootstrap: str, smtp_sink: SmtpSink, tmp_path: Path
):
    suffix = unique("stall")
    env = worker_env(
        kafka_bootstrap, suffix, smtp_sink.port, TOPIC_PARTITIONS="1", RECOVERY_STALL_SECONDS="2"
    )
    changelog = f"{env['APP_ID']}-templates-changelog"
    worker = Worker(env=env, data_dir=tmp_path / "data", log_path=tmp_path / "worker.log")
    worker.start()
    try:
        await worker.wait_ready()
        assert (await Api(worker.url).call("POST", "/api/template", SEED_MAIL))[0] == 201
        async with Collector(kafka_bootstrap, changelog) as records:
            [record] = await records.wait_for(lambda v: True, count=1)
        assert worker.stop() == 0

        producer = AIOKafkaProducer(
            bootstrap_servers=kafka_bootstrap, transactional_id=unique("stall-tx")
        )
        await producer.start()
        try:
            await producer.begin_transaction()
            await producer.send_and_wait(changelog, record.value, key=record.key, partition=0)
            await producer.abort_transaction()
        finally:
            await producer.stop()

        worker.log_path.unlink()
        worker.data_dir = tmp_path / "fresh"  # nothing local: recovery must read the changelog
        worker.start()
        started = time.monotonic()
        while worker.proc.poll() is None and time.monotonic() - started < 90:
            await asyncio.sleep(0.2)
        elapsed = time.monotonic() - started
        log = worker.log_path.read_text()
        print(f"stalled recovery: worker exited {worker.proc.returncode} after {elapsed:.1f}s")
        assert worker.proc.returncode == 1, worker.log_tail()
        assert re.search(r"table recovery made no progress for \d+ s; reading again", log)
        # Which partition, how far it got, and where the fetcher stands (for the operator).
        assert re.search(
            rf"{changelog}\[0\] applied up to \d+ of \d+ \(active, fetcher position", log
        )
        assert "exiting so the group moves these partitions" in log
        assert "Worker ready" not in log
    finally:
        worker.stop()
