"""A hanging SMS provider delays only SMS: MAIL requests in the same stream keep their speed."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import pytest

from app import codec
from devtools.support import (
    SEED_MAIL,
    SEED_SMS,
    Api,
    Collector,
    Kafka,
    Worker,
    topic_env,
    unique,
    worker_env,
)
from tests.conftest import SmtpSink
from tests.fakes.server import HANG
from tests.fakes.webhook import WebhookFake

pytestmark = pytest.mark.integration

SMS = 20
MAILS = 60
TIMEOUT = 8.0


def mail(pid: int) -> dict:
    return {
        "processInstanceId": pid,
        "templateName": "otpMail",
        "channel": "MAIL",
        "recipient": f"m{pid}@example.com",
        "clientId": f"m{pid}",
    }


def sms(pid: int) -> dict:
    return {
        "processInstanceId": pid,
        "templateName": "otpSMS",
        "channel": "SMS",
        "recipient": f"+40700{pid:06d}",
        "clientId": f"s{pid}",
    }


async def test_hanging_sms_provider_does_not_slow_mail(
    kafka_bootstrap: str, smtp_sink: SmtpSink, tmp_path: Path
):
    suffix = unique("slow")
    topics = topic_env(suffix)
    with WebhookFake() as hook:
        hook.script.then(*([HANG] * 1000))  # every SMS request hangs
        env = worker_env(
            kafka_bootstrap,
            suffix,
            smtp_sink.port,
            SMS_PROVIDER="webhook",
            SMS_WEBHOOK_URL=hook.hook_url,
            DELIVERY_TIMEOUT_SECONDS=str(TIMEOUT),
            LOG_LEVEL="WARNING",
        )
        worker = Worker(
            env=env, data_dir=tmp_path / "data", log_path=tmp_path / "worker.log"
        ).start()
        try:
            await worker.wait_ready()
            api = Api(worker.url)
            for template in (SEED_MAIL, SEED_SMS):
                assert (await api.call("POST", "/api/template", template))[0] == 201
            async with (
                Kafka(kafka_bootstrap) as kafka,
                Collector(kafka_bootstrap, topics["KAFKA_TOPIC_OTP_GENERATE_OUT"]) as out,
            ):
                # Baseline: MAIL alone.
                sent_at: dict[int, float] = {}
                for pid in range(MAILS):
                    sent_at[pid] = time.monotonic()
                    await kafka.send(
                        topics["KAFKA_TOPIC_OTP_GENERATE_IN"], mail(pid), key=str(pid).encode()
                    )
                await out.wait_for(lambda v: v["processInstanceId"] < MAILS, count=MAILS)
                # Then SMS that hang, interleaved with MAIL.
                for i in range(SMS):
                    pid = 1000 + i
                    sent_at[pid] = time.monotonic()
                    await kafka.send(
                        topics["KAFKA_TOPIC_OTP_GENERATE_IN"], sms(pid), key=str(pid).encode()
                    )
                for pid in range(2000, 2000 + MAILS):
                    sent_at[pid] = time.monotonic()
                    await kafka.send(
                        topics["KAFKA_TOPIC_OTP_GENERATE_IN"], mail(pid), key=str(pid).encode()
                    )
                await out.wait_for(
                    lambda v: v["processInstanceId"] >= 2000, count=MAILS, timeout=TIMEOUT
                )
                assert not [r for r in out.records if codec.loads(r.value)["channel"] == "SMS"]
                sms_replies = await out.wait_for(
                    lambda v: v["channel"] == "SMS", count=SMS, timeout=TIMEOUT + 20
                )
        finally:
            worker.stop()

    arrival = {codec.loads(r.value)["processInstanceId"]: r.timestamp / 1000 for r in out.records}
    offset = time.time() - time.monotonic()
    alone = [arrival[p] - offset - sent_at[p] for p in range(MAILS)]
    beside = [arrival[p] - offset - sent_at[p] for p in range(2000, 2000 + MAILS)]
    print(
        f"\nMAIL reply latency p50: alone {statistics.median(alone) * 1000:.0f} ms, "
        f"beside {SMS} hanging SMS {statistics.median(beside) * 1000:.0f} ms "
        f"(max {max(beside) * 1000:.0f} ms); SMS answered after the {TIMEOUT:.0f} s delivery bound"
    )
    assert all(not codec.loads(r.value)["otpSent"] for r in sms_replies)
    assert all("webhook" in codec.loads(r.value)["error"] for r in sms_replies)
    assert max(beside) < TIMEOUT / 2, "MAIL waited on the hanging SMS provider"
    assert statistics.median(beside) < max(1.0, 5 * statistics.median(alone))
