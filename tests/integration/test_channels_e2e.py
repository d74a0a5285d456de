"""SMS over Twilio and PUSH over FCM end to end: real broker, real worker, real HTTP providers.

One worker process serves every test of this module; it talks to a Twilio fake and to a Google
OAuth2 + FCM fake, both real HTTP servers in this test process, and the tests read the codes
the way a user would: from the messages the providers received.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest

from app import codec
from app.flows.receipts import REGISTER, Message
from devtools.support import Api, Collector, Kafka, Worker, flowx, topic_env, unique, worker_env
from tests.conftest import SmtpSink
from tests.fakes.google import GoogleFake
from tests.fakes.server import Reply
from tests.fakes.twilio import TwilioFake

pytestmark = pytest.mark.integration

SMS_TEMPLATE = {
    "name": "otpSMS",
    "type": "SMS",
    "strategyType": "SMS",
    "active": True,
    "language": "en",
    "subject": None,
    "body": "OTP [(${otpValue})]",
    "context": [],
    "params": [{"key": "otpValue", "mandatory": True}],
}
PUSH_TEMPLATE = {
    "name": "otpPush",
    "type": "PUSH",
    "active": True,
    "language": "en",
    "subject": "Your sign-in code",
    "body": "Code [(${otpValue})] for [(${clientId})]",
    "context": [],
    "params": [{"key": "otpValue", "mandatory": True}, {"key": "clientId", "mandatory": True}],
}
HEADERS = [("fxContext", b"main"), ("Fx-Organization-Id", b"org-1")]
DEVICE = "fcm-device-token:APA91b_e2e"


@pytest.fixture(scope="module")
def twilio() -> Iterator[TwilioFake]:
    with TwilioFake() as fake:
        yield fake


@pytest.fixture(scope="module")
def google() -> Iterator[GoogleFake]:
    with GoogleFake(project_id="otp-e2e") as fake:
        yield fake


@pytest.fixture(scope="module")
def suffix() -> str:
    return unique("chan")


@pytest.fixture(scope="module")
def worker(
    kafka_bootstrap: str, twilio: TwilioFake, google: GoogleFake, suffix: str, tmp_path_factory
) -> Iterator[Worker]:
    base: Path = tmp_path_factory.mktemp("channels-worker")
    sink = SmtpSink()  # MAIL stays configured; nothing here sends mail
    env = worker_env(
        kafka_bootstrap,
        suffix,
        sink.port,
        SMS_PROVIDER="twilio",
        TWILIO_ACCOUNT_SID=twilio.account_sid,
        TWILIO_AUTH_TOKEN=twilio.auth_token,
        TWILIO_FROM="+15017122661",
        TWILIO_BASE_URL=twilio.url,
        PUSH_PROVIDER="fcm",
        FCM_PROJECT_ID=google.project_id,
        FCM_CREDENTIALS_FILE=str(google.service_account_file(base)),
        FCM_BASE_URL=google.url,
        DELIVERY_TIMEOUT_SECONDS="5",
    )
    w = Worker(env=env, data_dir=base / "data", log_path=base / "worker.log")
    w.env["PUBLIC_BASE_URL"] = w.url  # Twilio's status callbacks come back to this worker
    w.start()
    w.wait_ready_sync()
    yield w
    w.stop()


async def create_templates(worker: Worker) -> None:
    api = Api(worker.url)
    for template in (SMS_TEMPLATE, PUSH_TEMPLATE):
        status, body = await api.call("POST", "/api/template", template)
        assert status in (201, 409), body


def generate(pid: int, client: str, channel: str, recipient: str) -> dict:
    return {
        "processInstanceId": pid,
        "templateName": "otpSMS" if channel == "SMS" else "otpPush",
        "channel": channel,
        "recipient": recipient,
        "clientId": client,
    }


async def generate_then_validate(
    kafka_bootstrap: str, suffix: str, request: dict, read_code
) -> dict:
    """Send a generate, read the code at the provider, validate it; return the generate reply."""
    topics = topic_env(suffix)
    pid, client, channel = request["processInstanceId"], request["clientId"], request["channel"]
    async with (
        Kafka(kafka_bootstrap) as kafka,
        Collector(kafka_bootstrap, topics["KAFKA_TOPIC_OTP_GENERATE_OUT"]) as gen_out,
        Collector(kafka_bootstrap, topics["KAFKA_TOPIC_OTP_VALIDATE_OUT"]) as val_out,
    ):
        await kafka.send(topics["KAFKA_TOPIC_OTP_GENERATE_IN"], request, headers=HEADERS)
        [sent] = await gen_out.wait_for(lambda v: v["processInstanceId"] == pid)
        reply = codec.loads(sent.value)
        assert reply["otpSent"] is True, reply
        assert dict(sent.headers) == dict(HEADERS)
        validate = {"processInstanceId": pid, "clientId": client, "channel": channel}
        await kafka.send(
            topics["KAFKA_TOPIC_OTP_VALIDATE_IN"], {**validate, "otp": read_code()}, headers=HEADERS
        )
        [valid] = await val_out.wait_for(lambda v: v["processInstanceId"] == pid)
        assert flowx(codec.loads(valid.value)) == {**validate, "otpValid": True, "error": None}
        return reply


async def test_sms_over_twilio_then_validate(
    worker: Worker, twilio: TwilioFake, kafka_bootstrap: str, suffix: str
):
    await create_templates(worker)
    number = "+40711000001"

    def code() -> str:
        [message] = twilio.to(number)
        match = re.fullmatch(r"OTP (\d{6})", message["body"])
        assert match, message
        return match.group(1)

    reply = await generate_then_validate(
        kafka_bootstrap, suffix, generate(501, "sms-client-1", "SMS", number), code
    )
    assert flowx(reply) == {
        "processInstanceId": 501,
        "clientId": "sms-client-1",
        "channel": "SMS",
        "otpSent": True,
        "error": None,
    }
    assert twilio.to(number)[0]["from"] == "+15017122661"


async def test_push_over_fcm_then_validate(
    worker: Worker, google: GoogleFake, kafka_bootstrap: str, suffix: str
):
    await create_templates(worker)
    google.send_script.then(Reply(503, {"error": {"code": 503, "status": "UNAVAILABLE"}}))

    def code() -> str:
        [message] = google.to(DEVICE)
        assert message["title"] == "Your sign-in code"
        match = re.fullmatch(r"Code (\d{6}) for push-client-1", message["body"])
        assert match, message
        return match.group(1)

    await generate_then_validate(
        kafka_bootstrap, suffix, generate(502, "push-client-1", "PUSH", DEVICE), code
    )
    # The 503 was retried inside the worker: two sends seen, one message delivered.
    assert len(google.seen("/messages:send")) >= 2 and len(google.to(DEVICE)) == 1


async def test_provider_refusals_become_error_replies(
    worker: Worker, twilio: TwilioFake, google: GoogleFake, kafka_bootstrap: str, suffix: str
):
    await create_templates(worker)
    topics = topic_env(suffix)
    cases = {
        511: (
            generate(511, "bad-number", "SMS", "0711000001"),
            "recipient must be a phone number in E.164 format",
        ),
        512: (
            generate(512, "refused-number", "SMS", "+15550001111"),
            "twilio delivery failed: HTTP 400 (21211)",
        ),
        513: (
            generate(513, "gone-device", "PUSH", "unregistered-device"),
            "fcm delivery failed: HTTP 404 (UNREGISTERED)",
        ),
        514: (
            generate(514, "spaced-device", "PUSH", "has space"),
            "recipient must be a device token without spaces",
        ),
    }
    twilio_before = len(twilio.requests)
    async with (
        Kafka(kafka_bootstrap) as kafka,
        Collector(kafka_bootstrap, topics["KAFKA_TOPIC_OTP_GENERATE_OUT"]) as gen_out,
        Collector(kafka_bootstrap, topics["KAFKA_TOPIC_OTP_VALIDATE_OUT"]) as val_out,
    ):
        for request, _ in cases.values():
            await kafka.send(topics["KAFKA_TOPIC_OTP_GENERATE_IN"], request)
        replies = await gen_out.wait_for(lambda v: v["processInstanceId"] in cases, count=4)
        for record in replies:
            reply = codec.loads(record.value)
            assert reply["otpSent"] is False
            assert reply["error"].startswith(cases[reply["processInstanceId"]][1]), reply
            assert twilio.auth_token not in reply["error"]
        # Only the E.164-valid number reached Twilio, once (a 400 is not retried).
        assert len(twilio.requests) == twilio_before + 1
        # A failed delivery stores no code: validating for that client finds none.
        await kafka.send(
            topics["KAFKA_TOPIC_OTP_VALIDATE_IN"],
            {"processInstanceId": 515, "clientId": "refused-number", "channel": "SMS", "otp": "1"},
        )
        [reply] = await val_out.wait_for(lambda v: v["processInstanceId"] == 515)
        assert codec.loads(reply.value)["error"] == "no code was generated for this client"


async def delivered_entry(api: Api, receiver: str) -> dict:
    """The receiver's newest send-log entry, once its latest status is ``delivered``."""
    for _ in range(100):
        status, body = await api.call("GET", f"/api/notifications?receiver={quote(receiver)}")
        assert status == 200, body
        if body["items"] and body["items"][0]["status"] == "delivered":
            return body["items"][0]
        await asyncio.sleep(0.2)
    raise AssertionError(f"no delivered entry for {receiver}: {body}")


async def test_twilio_status_callbacks_become_delivery_events(
    worker: Worker, twilio: TwilioFake, kafka_bootstrap: str, suffix: str
):
    await create_templates(worker)
    topics = topic_env(suffix)
    delivered, undelivered = "+40722100001", "+40722100099"
    async with (
        Kafka(kafka_bootstrap) as kafka,
        Collector(kafka_bootstrap, topics["KAFKA_TOPIC_OTP_GENERATE_OUT"]) as gen_out,
        Collector(kafka_bootstrap, topics["KAFKA_TOPIC_NOTIFICATION_EVENTS"]) as events,
    ):
        for pid, number in ((801, delivered), (802, undelivered)):
            await kafka.send(
                topics["KAFKA_TOPIC_OTP_GENERATE_IN"], generate(pid, f"cb-{pid}", "SMS", number)
            )
        await gen_out.wait_for(lambda v: v["processInstanceId"] in (801, 802), count=2)

        def statuses(number: str) -> list[str]:
            return [
                codec.loads(r.value)["status"]
                for r in events.records
                if r.key == number.encode() and codec.loads(r.value)["type"] == "delivery.status"
            ]

        for _ in range(150):  # the other tests' messages report too: wait for these two
            if len(statuses(delivered)) == 3 and len(statuses(undelivered)) == 3:
                break
            await asyncio.sleep(0.2)
        assert statuses(delivered) == ["queued", "sent", "delivered"]
        assert statuses(undelivered) == ["queued", "sent", "undelivered"]
        [message] = twilio.to(delivered)
        [sent] = [
            codec.loads(r.value)
            for r in events.records
            if r.key == delivered.encode() and codec.loads(r.value)["type"] == "otp.sent"
        ]
        assert sent["providerMessageId"] == message["sid"]
        last = [codec.loads(r.value) for r in events.records if r.key == undelivered.encode()][-1]
        assert last["error"] == "twilio error 30003" and last["clientId"] == "cb-802"

        def answers() -> list[int]:
            return [answer for sid, _, answer in twilio.callbacks if sid == message["sid"]]

        for _ in range(100):  # the fake records an answer once its callback returns
            if len(answers()) == 3:
                break
            await asyncio.sleep(0.1)
        assert answers() == [204, 204, 204]

        # ... and the send log shows the message's history, whichever worker is asked.
        api = Api(worker.url)
        entry = await delivered_entry(api, delivered)
        assert [(e["type"], e.get("status")) for e in entry["events"]] == [
            ("otp.sent", "sent"),
            ("delivery.status", "queued"),
            ("delivery.status", "sent"),
            ("delivery.status", "delivered"),
        ]

        # Unsigned, wrongly signed or unknown: refused, and no event is written.
        url = f"{worker.url}/api/callbacks/twilio"
        params = {"MessageSid": message["sid"], "MessageStatus": "failed", "ErrorCode": "1"}
        before = len(events.records)
        async with aiohttp.ClientSession() as session:
            async with session.post(url, data=params) as resp:
                assert resp.status == 403
            wrong = {"X-Twilio-Signature": twilio.sign(url + "?x=1", params)}
            async with session.post(url, data=params, headers=wrong) as resp:
                assert resp.status == 403
            unknown = {**params, "MessageSid": "SM" + "0" * 32}
            signed = {"X-Twilio-Signature": twilio.sign(url, unknown)}
            async with session.post(url, data=unknown, headers=signed) as resp:
                assert resp.status == 404
            huge = {"X-Twilio-Signature": "x"}
            async with session.post(url, data=b"a=" + b"x" * 20000, headers=huge) as resp:
                assert resp.status == 413
        await asyncio.sleep(1)
        assert len(events.records) == before
        assert await delivered_entry(api, delivered) == entry

        # Records on message-commands that are not commands are dead-lettered, and the
        # stream goes on: the registration below is still applied.
        hostile = {
            "not-json": b"\xff{",
            "unknown-kind": codec.dumps({"k": "z"}),
            "bad-registration": codec.dumps({"k": REGISTER, "m": {"provider": 7}}),
        }
        async with Collector(kafka_bootstrap, topics["KAFKA_TOPIC_OTP_DLQ"]) as dlq:
            for name, value in hostile.items():
                await kafka.send(
                    f"{topics['APP_ID']}-message-commands", value, key=f"SM-{name}".encode()
                )
            deadline = time.monotonic() + 30
            while len(letters := [r for r in dlq.records if r.key.startswith(b"SM-")]) < 3:
                assert time.monotonic() < deadline, f"{len(letters)} of 3 dead-lettered"
                await asyncio.sleep(0.1)
        assert sorted(r.value for r in letters) == sorted(hostile.values())  # byte for byte
        for letter in letters:
            assert dict(letter.headers)["x-dlq-reason"].startswith(b"not a message command: ")

        # A report that overtakes its message's registration is applied once it is registered.
        early = "SM" + "e" * 32
        report = {"MessageSid": early, "MessageStatus": "queued"}
        signed = {"X-Twilio-Signature": twilio.sign(url, report)}
        async with aiohttp.ClientSession() as session:
            posting = asyncio.create_task(session.post(url, data=report, headers=signed))
            await asyncio.sleep(0.5)
            message = Message("twilio", "+40722100777", time.time(), {"clientId": "cb-early"})
            await kafka.send(
                f"{topics['APP_ID']}-message-commands",
                {"k": REGISTER, "m": asdict(message)},
                key=early.encode(),
            )
            async with await posting as resp:
                assert resp.status == 204
        [early_event] = await events.wait_for(lambda v: v.get("providerMessageId") == early)
        assert codec.loads(early_event.value)["clientId"] == "cb-early"
