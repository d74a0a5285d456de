"""Send-notification end to end: real broker, worker process, SMTP server and S3 store.

FlowX's two examples go in verbatim (the welcome letter, the contract copy with its PDF); the
mail is read back as MIME at the SMTP server, the attachment's bytes compared.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app import codec
from devtools.support import (
    SEED_MAIL,
    Api,
    Collector,
    Kafka,
    Worker,
    topic_env,
    unique,
    worker_env,
)
from tests.conftest import SmtpSink

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
CODE_IN_MAIL = re.compile(r"<p>(\d{6})</p>")
PDF = b"%PDF-1.7\n" + os.urandom(300_000) + b"\n%%EOF\n"


def example(name: str) -> dict[str, Any]:
    return codec.loads((EXAMPLES / name).read_bytes())


@pytest.fixture(scope="module")
def sink() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    sink.controller.start()
    yield sink
    sink.controller.stop()


@pytest.fixture(scope="module")
def suffix() -> str:
    return unique("notify")


@pytest.fixture(scope="module")
def worker(
    kafka_bootstrap: str, sink: SmtpSink, suffix: str, s3_store: Any, tmp_path_factory
) -> Iterator[Worker]:
    s3_store.put("contracts", "contract.pdf", PDF, content_type="application/pdf")
    base: Path = tmp_path_factory.mktemp("worker")
    env = worker_env(
        kafka_bootstrap,
        suffix,
        sink.port,
        APPLICATION_FILE_STORAGE_S3_SERVER_URL=s3_store.url,
        APPLICATION_FILE_STORAGE_S3_ACCESS_KEY=s3_store.access_key,
        APPLICATION_FILE_STORAGE_S3_SECRET_KEY=s3_store.secret_key,
    )
    w = Worker(env=env, data_dir=base / "data", log_path=base / "worker.log").start()
    w.wait_ready_sync()
    yield w
    w.stop()


@pytest.fixture(scope="module")
def templates(worker: Worker) -> None:
    asyncio.run(store_templates(Api(worker.url)))


async def store_templates(api: Api) -> None:
    for name in ("welcomeLetter.json", "contractCopy.json"):
        status, body = await api.call("POST", "/api/template", example(name))
        assert status in (201, 409), body
    forwarded = {**example("welcomeLetter.json"), "name": "welcomeForwarded"}
    status, body = await api.call("POST", "/api/template", {**forwarded, "forwardOnKafka": True})
    assert status in (201, 409), body
    assert body["forwardOnKafka"] is True


async def notify(
    kafka_bootstrap: str, suffix: str, request: dict[str, Any], pid: str
) -> tuple[Any, dict[str, Any]]:
    topics = topic_env(suffix)
    headers = [("processInstanceId", pid.encode()), ("fxContext", b"main")]
    async with (
        Kafka(kafka_bootstrap) as kafka,
        Collector(kafka_bootstrap, topics["KAFKA_TOPIC_NOTIFICATION_INTERNAL_OUT"]) as out,
    ):
        await kafka.send(topics["KAFKA_TOPIC_NOTIFICATION_INTERNAL_IN"], request, headers=headers)
        [record] = await out.wait_for(lambda v: v["processInstanceId"] == pid)
    assert record.key == pid.encode() and dict(record.headers) == dict(headers)
    return record, codec.loads(record.value)


async def test_welcome_letter_is_mailed_and_answered(
    worker: Worker, templates: None, sink: SmtpSink, kafka_bootstrap: str, suffix: str
):
    _, reply = await notify(kafka_bootstrap, suffix, example("notify-welcome.json"), "9001")
    assert reply == {
        "identifier": None,
        "templateName": "welcomeLetter",
        "language": "en",
        "channel": "MAIL",
        "receivers": ["john.doe@mail.com"],
        "error": None,
        "processInstanceId": "9001",
        "forwarded": False,
        "results": [{"receiver": "john.doe@mail.com", "sent": True, "error": None}],
    }
    [mail] = sink.to("john.doe@mail.com")
    assert mail["Subject"] == "Welcome, John"
    assert "Dear <span>John</span>" in mail.get_body(preferencelist=("html",)).get_content()
    assert "Dear John" in mail.get_body(preferencelist=("plain",)).get_content()


async def test_contract_copy_carries_the_pdf_byte_for_byte(
    worker: Worker, templates: None, sink: SmtpSink, kafka_bootstrap: str, suffix: str
):
    _, reply = await notify(kafka_bootstrap, suffix, example("notify-contract.json"), "9002")
    assert reply["error"] is None and reply["identifier"] == "text"
    assert reply["channel"] == "MAIL"  # the request names none: the template's type
    [mail] = sink.to("someone@somewhere.com")
    assert mail["Subject"] == "Your contract, first last"
    [attachment] = list(mail.iter_attachments())
    assert attachment.get_filename() == "contract"
    assert attachment.get_content_type() == "application/pdf"
    assert attachment.get_content() == PDF


async def test_one_receiver_refused_by_the_server_of_three(
    worker: Worker, templates: None, sink: SmtpSink, kafka_bootstrap: str, suffix: str
):
    receivers = ["ann@three.example", "reject.me@three.example", "bob@three.example"]
    request = {**example("notify-welcome.json"), "receivers": receivers}
    _, reply = await notify(kafka_bootstrap, suffix, request, "9003")
    by_receiver = {r["receiver"]: r for r in reply["results"]}
    assert by_receiver["ann@three.example"]["sent"] is True
    assert by_receiver["bob@three.example"]["sent"] is True
    refused = by_receiver["reject.me@three.example"]
    assert refused["sent"] is False and "550" in refused["error"]
    assert reply["error"].startswith("1 of 3 receivers not reached: reject.me@three.example")
    assert len(sink.to("ann@three.example")) == 1 and len(sink.to("bob@three.example")) == 1


async def test_a_forwarded_template_goes_to_the_adapter_not_the_mail_server(
    worker: Worker, templates: None, sink: SmtpSink, kafka_bootstrap: str, suffix: str
):
    topics = topic_env(suffix)
    request = {
        **example("notify-welcome.json"),
        "templateName": "welcomeForwarded",
        "receivers": ["fwd@four.example"],
    }
    async with Collector(kafka_bootstrap, topics["KAFKA_TOPIC_NOTIFICATION_EXTERNAL_OUT"]) as ext:
        _, reply = await notify(kafka_bootstrap, suffix, request, "9004")
        [record] = await ext.wait_for(lambda v: v["processInstanceId"] == "9004")
    assert reply["forwarded"] is True and reply["error"] is None
    forwarded = codec.loads(record.value)
    assert forwarded["receivers"] == ["fwd@four.example"]
    assert forwarded["subject"] == "Welcome, John" and "John" in forwarded["body"]
    assert dict(record.headers)["processInstanceId"] == b"9004"
    assert len(ext.records) == 1 and sink.to("fwd@four.example") == []


async def test_several_attachments_are_read_at_once_and_attached_in_order(
    worker: Worker, templates: None, sink: SmtpSink, kafka_bootstrap: str, suffix: str
):
    names = ["one.pdf", "two.pdf", "three.pdf"]
    request = {
        **example("notify-contract.json"),
        "receivers": ["several@five.example"],
        "attachments": [{"filename": n, "path": "contracts/contract.pdf"} for n in names],
    }
    _, reply = await notify(kafka_bootstrap, suffix, request, "9006")
    assert reply["error"] is None, reply
    [mail] = sink.to("several@five.example")
    attached = list(mail.iter_attachments())
    assert [a.get_filename() for a in attached] == names
    assert all(a.get_content() == PDF for a in attached)


async def test_a_missing_attachment_sends_nothing_and_names_it(
    worker: Worker, templates: None, sink: SmtpSink, kafka_bootstrap: str, suffix: str
):
    request = {
        **example("notify-contract.json"),
        "receivers": ["nobody@five.example"],
        "attachments": [
            {"filename": "first.pdf", "path": "contracts/contract.pdf"},
            {"filename": "gone.pdf", "path": "contracts/gone.pdf"},
            {"filename": "last.pdf", "path": "contracts/contract.pdf"},
        ],
    }
    _, reply = await notify(kafka_bootstrap, suffix, request, "9005")
    assert reply["error"].startswith("attachments: gone.pdf (contracts/gone.pdf): not found")
    assert reply["results"] == [] and sink.to("nobody@five.example") == []


async def test_every_step_is_one_event_on_the_events_topic(
    worker: Worker, templates: None, sink: SmtpSink, kafka_bootstrap: str, suffix: str
):
    topics = topic_env(suffix)
    status, body = await Api(worker.url).call("POST", "/api/template", SEED_MAIL)
    assert status in (201, 409), body
    person = "events.person@six.example"
    generate = {
        "processInstanceId": 9100,
        "templateName": "otpMail",
        "channel": "MAIL",
        "recipient": person,
        "clientId": "events-client",
    }
    validate = {"processInstanceId": 9101, "clientId": "events-client", "channel": "MAIL"}
    async with (
        Kafka(kafka_bootstrap) as kafka,
        Collector(kafka_bootstrap, topics["KAFKA_TOPIC_OTP_GENERATE_OUT"]) as gen_out,
        Collector(kafka_bootstrap, topics["KAFKA_TOPIC_OTP_VALIDATE_OUT"]) as val_out,
        Collector(kafka_bootstrap, topics["KAFKA_TOPIC_NOTIFICATION_EVENTS"]) as events,
    ):
        await kafka.send(topics["KAFKA_TOPIC_OTP_GENERATE_IN"], generate)
        await gen_out.wait_for(lambda v: v["processInstanceId"] == 9100)
        [mail] = sink.to(person)
        code = CODE_IN_MAIL.search(mail.get_body(preferencelist=("html",)).get_content())[1]
        wrong = "000000" if code != "000000" else "111111"
        await kafka.send(topics["KAFKA_TOPIC_OTP_VALIDATE_IN"], {**validate, "otp": wrong})
        await val_out.wait_for(lambda v: v["otpValid"] is False)
        await kafka.send(topics["KAFKA_TOPIC_OTP_VALIDATE_IN"], {**validate, "otp": code})
        await val_out.wait_for(lambda v: v["otpValid"] is True)
        request = {**example("notify-welcome.json"), "receivers": [person, "other@six.example"]}
        await notify(kafka_bootstrap, suffix, request, "9102")
        await events.wait_for(lambda v: v["receiver"] in (person, "other@six.example"), count=5)
    mine = [codec.loads(r.value) for r in events.records if r.key == person.encode()]
    assert [e["type"] for e in mine] == [
        "otp.sent",
        "otp.attempt_failed",
        "otp.validated",
        "notification.sent",
    ]
    other = [codec.loads(r.value) for r in events.records if r.key == b"other@six.example"]
    assert [e["type"] for e in other] == ["notification.sent"]
    assert all(e["provider"] == "smtp" for e in mine if e["type"].endswith("sent"))
    assert code not in str([r.value for r in events.records])
