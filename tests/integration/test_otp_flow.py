"""OTP generate and validate end to end: real broker, real worker process, real SMTP server."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import SmtpSink
from tests.support import Api, Collector, Kafka, Worker, topic_env, unique, worker_env

pytestmark = pytest.mark.integration

SEED_MAIL = {
    "name": "otpMail",
    "type": "MAIL",
    "active": True,
    "language": "en",
    "subject": "otp for [(${clientId})]",
    "body": "<!DOCTYPE html><html xmlns:th='<http://www.thymeleaf.org>'><head><meta http-equiv='Content-Type' content='text/html; charset=UTF-8' /></head><body><p>Yay, an otp was generated for you:</p><p th:text='${otpValue}'></p></body></html>",
    "context": [],
    "params": [{"key": "clientId", "mandatory": True}, {"key": "otpValue", "mandatory": True}],
}
CODE_IN_MAIL = re.compile(r"<p>(\d{6})</p>")


@pytest.fixture(scope="module")
def sink() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    sink.controller.start()
    yield sink
    sink.controller.stop()


@pytest.fixture(scope="module")
def suffix() -> str:
    return unique("otp")


@pytest.fixture(scope="module")
def worker(kafka_bootstrap: str, sink: SmtpSink, suffix: str, tmp_path_factory) -> Iterator[Worker]:
    base: Path = tmp_path_factory.mktemp("worker")
    env = worker_env(kafka_bootstrap, suffix, sink.port)
    w = Worker(env=env, data_dir=base / "data", log_path=base / "worker.log").start()
    w.wait_ready_sync()
    yield w
    w.stop()


def code_from(message) -> str:
    html = message.get_body(preferencelist=("html",)).get_content()
    match = CODE_IN_MAIL.search(html)
    assert match, html
    return match.group(1)


async def test_generate_mail_then_validate(
    worker: Worker, sink: SmtpSink, kafka_bootstrap: str, suffix: str
):
    topics = topic_env(suffix)
    api = Api(worker.url)
    status, body = await api.call("POST", "/api/template", SEED_MAIL)
    assert status in (201, 409), body
    headers = [
        ("fxContext", b"main"),
        ("processInstanceUuid", b"abc-123"),
        ("Fx-Organization-Id", b"org-1"),
    ]
    async with (
        Kafka(kafka_bootstrap) as kafka,
        Collector(kafka_bootstrap, topics["KAFKA_TOPIC_OTP_GENERATE_OUT"]) as gen_out,
        Collector(kafka_bootstrap, topics["KAFKA_TOPIC_OTP_VALIDATE_OUT"]) as val_out,
    ):
        await kafka.send(
            topics["KAFKA_TOPIC_OTP_GENERATE_IN"],
            {
                "processInstanceId": 12345,
                "templateName": "otpMail",
                "channel": "MAIL",
                "recipient": "user@example.com",
                "clientId": "1234567890",
            },
            headers=headers,
        )
        [reply] = await gen_out.wait_for(lambda v: v["processInstanceId"] == 12345)
        assert reply.value and reply.key == b"12345"
        from app import codec

        assert codec.loads(reply.value) == {
            "processInstanceId": 12345,
            "clientId": "1234567890",
            "channel": "MAIL",
            "otpSent": True,
            "error": None,
        }
        assert dict(reply.headers) == dict(headers)
        [mail] = sink.to("user@example.com")
        assert mail["Subject"] == "otp for 1234567890"
        code = code_from(mail)
        assert code in mail.get_body(preferencelist=("plain",)).get_content()

        validate = {
            "processInstanceId": 12345,
            "clientId": "1234567890",
            "channel": "MAIL",
            "otp": code,
        }
        await kafka.send(topics["KAFKA_TOPIC_OTP_VALIDATE_IN"], validate, headers=headers)
        [ok] = await val_out.wait_for(lambda v: v["processInstanceId"] == 12345)
        assert codec.loads(ok.value) == {
            "processInstanceId": 12345,
            "clientId": "1234567890",
            "channel": "MAIL",
            "otpValid": True,
            "error": None,
        }
        assert dict(ok.headers) == dict(headers)
        await kafka.send(topics["KAFKA_TOPIC_OTP_VALIDATE_IN"], validate)
        replies = await val_out.wait_for(lambda v: v["processInstanceId"] == 12345, count=2)
        again = codec.loads(replies[1].value)
        assert again["otpValid"] is False and again["error"] == "code already used"
