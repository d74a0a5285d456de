"""SMS forwarded on Kafka (SMS_PROVIDER=kafka), FlowX's way, against the real broker."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app import codec
from app.channels.base import DeliveryError
from app.channels.kafka import KafkaChannel
from devtools.support import (
    Api,
    Collector,
    Kafka,
    Worker,
    flowx,
    free_port,
    topic_env,
    unique,
    worker_env,
)
from tests.conftest import SmtpSink
from tests.fakes.notifications import fast_policy, notification
from tests.integration.test_channels_e2e import HEADERS, SMS_TEMPLATE

pytestmark = pytest.mark.integration


async def test_channel_publishes_the_notification_with_the_request_headers(kafka_bootstrap: str):
    topic = f"test.{unique('ext')}.external.out"
    channel = KafkaChannel(bootstrap_servers=kafka_bootstrap, topic=topic, policy=fast_policy(10))
    headers = {"fxContext": b"main:2", "processInstanceUuid": b"uuid-1", "Fx-AppId": b"app"}
    try:
        await channel.send(notification(headers=headers, process_instance_id=77))
        await channel.send(notification(recipient="+40700000002", process_instance_id=78))
    finally:
        await channel.close()
    async with Collector(kafka_bootstrap, topic) as out:
        first, second = await out.wait_for(lambda v: True, count=2)
    assert first.key == b"77" and dict(first.headers) == headers
    assert codec.loads(first.value) == {
        "channel": "SMS",
        "to": "+40712345678",
        "subject": None,
        "body": "OTP 123456",
        "templateName": "otpSms",
        "processInstanceId": 77,
    }
    assert codec.loads(second.value)["to"] == "+40700000002" and not second.headers


async def test_unreachable_broker_fails_within_the_budget():
    channel = KafkaChannel(
        bootstrap_servers=f"127.0.0.1:{free_port()}", topic="t", policy=fast_policy(2)
    )
    started = time.monotonic()
    try:
        with pytest.raises(DeliveryError) as err:
            await channel.send(notification())
    finally:
        await channel.close()
    assert time.monotonic() - started < 2.5
    assert str(err.value).startswith("kafka delivery failed: ")


@pytest.fixture(scope="module")
def suffix() -> str:
    return unique("kext")


@pytest.fixture(scope="module")
def external_topic(suffix: str) -> str:
    return f"test.{suffix}.notification.external.out"


@pytest.fixture(scope="module")
def worker(
    kafka_bootstrap: str, suffix: str, external_topic: str, tmp_path_factory
) -> Iterator[Worker]:
    base: Path = tmp_path_factory.mktemp("kafka-sms-worker")
    env = worker_env(
        kafka_bootstrap,
        suffix,
        SmtpSink().port,
        SMS_PROVIDER="kafka",
        KAFKA_TOPIC_NOTIFICATION_EXTERNAL_OUT=external_topic,
    )
    w = Worker(env=env, data_dir=base / "data", log_path=base / "worker.log").start()
    w.wait_ready_sync()
    yield w
    w.stop()


async def test_sms_forwarded_on_kafka_then_validate(
    worker: Worker, kafka_bootstrap: str, suffix: str, external_topic: str
):
    status, body = await Api(worker.url).call("POST", "/api/template", SMS_TEMPLATE)
    assert status in (201, 409), body
    topics = topic_env(suffix)
    request = {
        "processInstanceId": 601,
        "templateName": "otpSMS",
        "channel": "SMS",
        "recipient": "+40722000001",
        "clientId": "kafka-client-1",
    }
    async with (
        Kafka(kafka_bootstrap) as kafka,
        Collector(kafka_bootstrap, topics["KAFKA_TOPIC_OTP_GENERATE_OUT"]) as gen_out,
        Collector(kafka_bootstrap, topics["KAFKA_TOPIC_OTP_VALIDATE_OUT"]) as val_out,
    ):
        await kafka.send(topics["KAFKA_TOPIC_OTP_GENERATE_IN"], request, headers=HEADERS)
        [sent] = await gen_out.wait_for(lambda v: v["processInstanceId"] == 601)
        assert codec.loads(sent.value)["otpSent"] is True
        # Read after the reply: the forwarded record was acknowledged before it was sent.
        async with Collector(kafka_bootstrap, external_topic) as external:
            [record] = await external.wait_for(lambda v: v["processInstanceId"] == 601)
        assert record.key == b"601" and dict(record.headers) == dict(HEADERS)
        forwarded = codec.loads(record.value)
        assert {k: v for k, v in forwarded.items() if k != "body"} == {
            "channel": "SMS",
            "to": "+40722000001",
            "subject": None,
            "templateName": "otpSMS",
            "processInstanceId": 601,
        }
        code = re.fullmatch(r"OTP (\d{6})", forwarded["body"]).group(1)
        validate = {"processInstanceId": 601, "clientId": "kafka-client-1", "channel": "SMS"}
        await kafka.send(topics["KAFKA_TOPIC_OTP_VALIDATE_IN"], {**validate, "otp": code})
        [valid] = await val_out.wait_for(lambda v: v["processInstanceId"] == 601)
        assert flowx(codec.loads(valid.value)) == {**validate, "otpValid": True, "error": None}
