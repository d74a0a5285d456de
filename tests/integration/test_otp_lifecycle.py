"""OTP state over time: expiry and the sweep's tombstones, restarts, and no code in clear."""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path

import pytest

from app import codec
from devtools.support import (
    SEED_MAIL,
    Api,
    Collector,
    Kafka,
    Worker,
    flowx,
    topic_env,
    unique,
    worker_env,
)
from tests.conftest import SmtpSink

pytestmark = pytest.mark.integration


def start_worker(
    kafka_bootstrap: str, sink: SmtpSink, base: Path, suffix: str, **extra: str
) -> Worker:
    env = worker_env(kafka_bootstrap, suffix, sink.port, **extra)
    return Worker(env=env, data_dir=base / "data", log_path=base / "worker.log").start()


def code_in(message, length: int) -> str:
    html = message.get_body(preferencelist=("html",)).get_content()
    match = re.search(rf"<p>(\w{{{length}}})</p>", html)
    assert match, html
    return match.group(1)


def recovery_start_offsets(log: str, changelog: str) -> list[list[int]]:
    """Per recovery in the log, the offsets where reading ``changelog`` started (-1: beginning)."""
    tables = []
    for line in log.splitlines():
        if "Reading Starts At - Active" not in line:
            continue
        rows = codec.loads(line)["message"].splitlines()
        offsets, current = [], None
        for row in rows:
            cells = [c.strip() for c in row.strip("|").split("|")]
            if len(cells) != 3 or not cells[2].lstrip("-").isdigit():
                continue
            current = cells[0] if cells[0] != "〃" else current
            if current == changelog:
                offsets.append(int(cells[2]))
        tables.append(offsets)
    return tables


def gen(pid: int, client: str) -> dict:
    return {
        "processInstanceId": pid,
        "templateName": "otpMail",
        "channel": "MAIL",
        "recipient": f"{client}@example.com",
        "clientId": client,
    }


def val(pid: int, client: str, code: str) -> dict:
    return {"processInstanceId": pid, "clientId": client, "channel": "MAIL", "otp": code}


async def test_expired_code_refused_and_swept(
    kafka_bootstrap: str, smtp_sink: SmtpSink, tmp_path: Path
):
    suffix = unique("exp")
    topics = topic_env(suffix)
    worker = start_worker(
        kafka_bootstrap,
        smtp_sink,
        tmp_path,
        suffix,
        FLOWX_OTP_EXPIRE_TIME_IN_SECONDS="2",
        OTP_SEND_WINDOW_SECONDS="3",
        OTP_SWEEP_INTERVAL_SECONDS="0.5",
    )
    try:
        await worker.wait_ready()
        assert (await Api(worker.url).call("POST", "/api/template", SEED_MAIL))[0] == 201
        changelog = f"{topics['APP_ID']}-otps-changelog"
        async with (
            Kafka(kafka_bootstrap) as kafka,
            Collector(kafka_bootstrap, topics["KAFKA_TOPIC_OTP_GENERATE_OUT"]) as gen_out,
            Collector(kafka_bootstrap, topics["KAFKA_TOPIC_OTP_VALIDATE_OUT"]) as val_out,
            Collector(kafka_bootstrap, changelog) as rows,
        ):
            await kafka.send(topics["KAFKA_TOPIC_OTP_GENERATE_IN"], gen(1, "exp-user"))
            await gen_out.wait_for(lambda v: v["processInstanceId"] == 1 and v["otpSent"])
            code = code_in(smtp_sink.to("exp-user@example.com")[0], 6)
            await asyncio.sleep(3)
            await kafka.send(topics["KAFKA_TOPIC_OTP_VALIDATE_IN"], val(2, "exp-user", code))
            [reply] = await val_out.wait_for(lambda v: v["processInstanceId"] == 2)
            assert flowx(codec.loads(reply.value)) == {
                "processInstanceId": 2,
                "clientId": "exp-user",
                "channel": "MAIL",
                "otpValid": False,
                "error": "code expired",
            }
            # The sweep deletes the row: a tombstone (value None) reaches the changelog.
            for _ in range(100):
                if any(r.key == b"exp-user" and r.value is None for r in rows.records):
                    break
                await asyncio.sleep(0.1)
            assert [r.value is None for r in rows.records if r.key == b"exp-user"][-1] is True
            await kafka.send(topics["KAFKA_TOPIC_OTP_VALIDATE_IN"], val(3, "exp-user", code))
            [gone] = await val_out.wait_for(lambda v: v["processInstanceId"] == 3)
            assert codec.loads(gone.value)["error"] == "no code was generated for this client"
    finally:
        worker.stop()


async def test_restart_keeps_codes_and_nothing_is_in_clear(
    kafka_bootstrap: str, smtp_sink: SmtpSink, tmp_path: Path
):
    """Codes survive a restart with the RocksDB dir kept and with it deleted (changelog recovery).

    Codes are 10 characters here so that a chance match in binary files or logs is negligible.
    """
    suffix = unique("rst")
    topics = topic_env(suffix)
    worker = start_worker(kafka_bootstrap, smtp_sink, tmp_path, suffix, FLOWX_OTP_LENGTH="10")
    clients = [f"rst-{i}" for i in range(6)]
    try:
        await worker.wait_ready()
        assert (await Api(worker.url).call("POST", "/api/template", SEED_MAIL))[0] == 201
        async with (
            Kafka(kafka_bootstrap) as kafka,
            Collector(kafka_bootstrap, topics["KAFKA_TOPIC_OTP_GENERATE_OUT"]) as gen_out,
            Collector(kafka_bootstrap, topics["KAFKA_TOPIC_OTP_VALIDATE_OUT"]) as val_out,
        ):
            for i, client in enumerate(clients):
                await kafka.send(topics["KAFKA_TOPIC_OTP_GENERATE_IN"], gen(i, client))
            await gen_out.wait_for(lambda v: v["otpSent"], count=len(clients))
            codes = {c: code_in(smtp_sink.to(f"{c}@example.com")[0], 10) for c in clients}

            worker.stop()
            worker.start()  # same DATA_DIR: RocksDB kept
            print(f"restart with RocksDB kept: ready in {await worker.wait_ready():.1f}s")
            assert 503 in worker.ready_statuses, worker.ready_statuses  # not ready while recovering
            await kafka.send(
                topics["KAFKA_TOPIC_OTP_VALIDATE_IN"], val(100, clients[0], codes[clients[0]])
            )
            await kafka.send(
                topics["KAFKA_TOPIC_OTP_VALIDATE_IN"], val(101, clients[1], codes[clients[1]])
            )
            # Answered before the next restart: SIGTERM with requests in flight is `make chaos`'s
            # subject (see README, Operations); this test is about state surviving restarts.
            await val_out.wait_for(lambda v: v["processInstanceId"] in (100, 101), count=2)

            assert worker.stop() is not None
            shutil.rmtree(worker.data_dir)
            worker.start()  # RocksDB deleted: rebuilt from the changelog topic
            print(f"restart with RocksDB deleted: ready in {await worker.wait_ready():.1f}s")
            for i, client in enumerate(clients[2:], start=102):
                await kafka.send(
                    topics["KAFKA_TOPIC_OTP_VALIDATE_IN"], val(i, client, codes[client])
                )
            replies = await val_out.wait_for(lambda v: 100 <= v["processInstanceId"] < 106, count=6)
            assert all(codec.loads(r.value)["otpValid"] for r in replies), [
                r.value for r in replies
            ]

        # Recovery read the changelog from where RocksDB left off when it was kept, from the
        # beginning when it was deleted (Faust logs where each partition's reading starts).
        starts = recovery_start_offsets(
            worker.log_path.read_text(), f"{topics['APP_ID']}-otps-changelog"
        )
        first, kept, deleted = starts[0], starts[1], starts[2]
        assert set(first) == {-1}
        assert any(offset >= 0 for offset in kept), kept
        assert set(deleted) == {-1}, deleted

        # No code in clear: not in RocksDB, not in the changelog, not in the worker's log.
        haystacks = {p: p.read_bytes() for p in worker.data_dir.rglob("*") if p.is_file()}
        haystacks[worker.log_path] = worker.log_path.read_bytes()
        async with Collector(kafka_bootstrap, f"{topics['APP_ID']}-otps-changelog") as changelog:
            await changelog.wait_for(lambda v: True, count=len(clients))
            await asyncio.sleep(1)
            for n, record in enumerate(changelog.records):
                haystacks[Path(f"changelog-{n}")] = (record.key or b"") + (record.value or b"")
        assert len(haystacks) > 3
        for code in codes.values():
            leaks = [str(p) for p, data in haystacks.items() if code.encode() in data]
            assert not leaks, f"a code was found in clear in {leaks}"
    finally:
        worker.stop()
