"""OTP generate and validate end to end: real broker, real worker process, real SMTP server."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from datetime import datetime
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
    flowx,
    topic_env,
    unique,
    worker_env,
)
from tests.conftest import SmtpSink

pytestmark = pytest.mark.integration

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
        generated = codec.loads(reply.value)
        assert flowx(generated) == {
            "processInstanceId": 12345,
            "clientId": "1234567890",
            "channel": "MAIL",
            "otpSent": True,
            "error": None,
        }
        # Added to FlowX's fields: when the code expires (the default ttl: 600 s from now).
        expires = datetime.fromisoformat(generated["expiresAt"]).timestamp()
        assert 590 < expires - time.time() <= 601
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
            "attemptsRemaining": 0,  # used: no tries left, the code no longer lives
            "expiresAt": None,
        }
        assert dict(ok.headers) == dict(headers)
        await kafka.send(topics["KAFKA_TOPIC_OTP_VALIDATE_IN"], validate)
        replies = await val_out.wait_for(lambda v: v["processInstanceId"] == 12345, count=2)
        again = codec.loads(replies[1].value)
        assert again["otpValid"] is False and again["error"] == "code already used"


async def ensure_templates(api: Api) -> None:
    for template in (
        SEED_MAIL,
        SEED_SMS,
        {**SEED_MAIL, "name": "inactiveMail", "active": False},
        {
            **SEED_MAIL,
            "name": "withFirstName",
            "subject": "Hi [(${firstName})] ([(${clientId})])",
            "params": [*SEED_MAIL["params"], {"key": "firstName", "mandatory": True}],
        },
    ):
        status, body = await api.call("POST", "/api/template", template)
        assert status in (201, 409), body


def gen(pid, client, **extra):
    return {
        "processInstanceId": pid,
        "templateName": "otpMail",
        "channel": "MAIL",
        "recipient": f"{client}@example.com",
        "clientId": client,
        **extra,
    }


async def test_wrong_code_five_times_locks(
    worker: Worker, sink: SmtpSink, kafka_bootstrap: str, suffix: str
):
    from app import codec

    topics = topic_env(suffix)
    await ensure_templates(Api(worker.url))
    async with (
        Kafka(kafka_bootstrap) as kafka,
        Collector(kafka_bootstrap, topics["KAFKA_TOPIC_OTP_GENERATE_OUT"]) as gen_out,
        Collector(kafka_bootstrap, topics["KAFKA_TOPIC_OTP_VALIDATE_OUT"]) as val_out,
    ):
        await kafka.send(topics["KAFKA_TOPIC_OTP_GENERATE_IN"], gen(200, "locked-user"))
        await gen_out.wait_for(lambda v: v["processInstanceId"] == 200 and v["otpSent"])
        code = code_from(sink.to("locked-user@example.com")[-1])
        wrong = "000000" if code != "000000" else "111111"
        for _ in range(5):
            await kafka.send(
                topics["KAFKA_TOPIC_OTP_VALIDATE_IN"],
                {
                    "processInstanceId": 201,
                    "clientId": "locked-user",
                    "channel": "MAIL",
                    "otp": wrong,
                },
                key=b"201",  # one process instance, one partition: the engine's order is kept
            )
        await kafka.send(
            topics["KAFKA_TOPIC_OTP_VALIDATE_IN"],
            {"processInstanceId": 201, "clientId": "locked-user", "channel": "MAIL", "otp": code},
            key=b"201",
        )
        replies = [
            codec.loads(r.value)
            for r in await val_out.wait_for(lambda v: v["processInstanceId"] == 201, count=6)
        ]
        assert [r["otpValid"] for r in replies] == [False] * 6
        assert [r["error"] for r in replies[:4]] == ["invalid code"] * 4
        assert "locked" in replies[4]["error"] and "locked" in replies[5]["error"]


async def test_refusals_send_nothing(
    worker: Worker, sink: SmtpSink, kafka_bootstrap: str, suffix: str
):
    from app import codec

    topics = topic_env(suffix)
    await ensure_templates(Api(worker.url))
    cases = {
        300: (gen(300, "r300", templateName="nope"), "template 'nope' not found"),
        301: (gen(301, "r301", templateName="inactiveMail"), "template 'inactiveMail' is inactive"),
        302: (
            gen(302, "r302", templateName="otpSMS"),
            "template 'otpSMS' is a SMS template, not MAIL",
        ),
        303: (
            gen(303, "r303", templateName="withFirstName"),
            "missing mandatory parameter(s): firstName",
        ),
        304: (
            gen(304, "r304", recipient="a@example.com, b@example.com"),
            "recipient must be one e-mail address",
        ),
        305: (
            gen(305, "r305", recipient="a@example.com\r\nBcc: evil@example.com"),
            "recipient must be one e-mail address",
        ),
        306: (
            gen(306, "r306", recipient="reject@example.com"),
            "smtp delivery failed: recipient refused (550)",
        ),
        307: (
            {
                **gen(307, "r307"),
                "channel": "SMS",
                "templateName": "otpSMS",
                "recipient": "+40700000000",
            },
            "channel SMS is not configured on this service",
        ),
        308: (
            gen(308, "r308", otpValue="123456"),
            "otpValue: is reserved: the service generates the code",
        ),
    }
    async with (
        Kafka(kafka_bootstrap) as kafka,
        Collector(kafka_bootstrap, topics["KAFKA_TOPIC_OTP_GENERATE_OUT"]) as gen_out,
        Collector(kafka_bootstrap, topics["KAFKA_TOPIC_OTP_VALIDATE_OUT"]) as val_out,
    ):
        for request, _ in cases.values():
            await kafka.send(topics["KAFKA_TOPIC_OTP_GENERATE_IN"], request)
        await gen_out.wait_for(lambda v: v["processInstanceId"] in cases, count=len(cases))
        for record in gen_out.records:
            reply = codec.loads(record.value)
            if reply["processInstanceId"] in cases:
                assert reply["otpSent"] is False
                assert reply["error"].startswith(cases[reply["processInstanceId"]][1]), reply
        # Nothing was sent and nothing stored: validating any code for those clients is "unknown".
        assert not [m for m in sink.messages if m["To"].startswith(("r30", "a@", "reject"))]
        await kafka.send(
            topics["KAFKA_TOPIC_OTP_VALIDATE_IN"],
            {"processInstanceId": 399, "clientId": "r306", "channel": "MAIL", "otp": "123456"},
        )
        [reply] = await val_out.wait_for(lambda v: v["processInstanceId"] == 399)
        assert codec.loads(reply.value)["error"] == "no code was generated for this client"


async def test_bad_input_batch_every_good_one_answered(
    worker: Worker, sink: SmtpSink, kafka_bootstrap: str, suffix: str
):
    """Good and bad messages interleaved: bad ones get an error reply or a DLQ record; none is lost."""
    from app import codec

    topics = topic_env(suffix)
    await ensure_templates(Api(worker.url))
    bad_no_pid = [
        b"not json at all",
        b"[1, 2, 3]",
        b'{"templateName": "otpMail"}',
        b"\xff\xfe",
        b"x" * 70000,
    ]
    bad_with_pid = [
        {
            "processInstanceId": 901,
            "templateName": "otpMail",
            "channel": "FAX",
            "recipient": "a@example.com",
            "clientId": "c",
        },
        {
            "processInstanceId": 902,
            "templateName": 5,
            "channel": "MAIL",
            "recipient": "a@example.com",
            "clientId": "c",
        },
        {
            "processInstanceId": 903,
            "templateName": "otpMail",
            "channel": "MAIL",
            "recipient": "a@example.com",
        },
        {
            "processInstanceId": 904,
            "templateName": "otpMail",
            "channel": "MAIL",
            "clientId": "c",
            "data": "oops",
        },
    ]
    good = [gen(1000 + i, f"batch-{i}") for i in range(20)]
    async with (
        Kafka(kafka_bootstrap) as kafka,
        Collector(kafka_bootstrap, topics["KAFKA_TOPIC_OTP_GENERATE_OUT"]) as gen_out,
        Collector(kafka_bootstrap, topics["KAFKA_TOPIC_OTP_VALIDATE_OUT"]) as val_out,
        Collector(kafka_bootstrap, topics["KAFKA_TOPIC_OTP_DLQ"]) as dlq,
    ):
        stream = []
        for i, request in enumerate(good):
            stream.append(request)
            if i < len(bad_no_pid):
                stream.append(bad_no_pid[i])
            if i < len(bad_with_pid):
                stream.append(bad_with_pid[i])
        for item in stream:
            await kafka.send(
                topics["KAFKA_TOPIC_OTP_GENERATE_IN"], item, headers=[("fxContext", b"main:4")]
            )
        await kafka.send(topics["KAFKA_TOPIC_OTP_VALIDATE_IN"], b"{broken")
        await kafka.send(
            topics["KAFKA_TOPIC_OTP_VALIDATE_IN"],
            {"processInstanceId": 905, "clientId": "c", "channel": "MAIL"},
        )

        goods = await gen_out.wait_for(lambda v: 1000 <= v["processInstanceId"] < 1020, count=20)
        assert all(codec.loads(r.value)["otpSent"] for r in goods)
        errors = {
            codec.loads(r.value)["processInstanceId"]: codec.loads(r.value)
            for r in await gen_out.wait_for(lambda v: 901 <= v["processInstanceId"] <= 904, count=4)
        }
        assert errors[901]["error"].startswith("channel:") and errors[901]["otpSent"] is False
        assert errors[902]["error"].startswith("templateName:")
        assert errors[903]["error"].startswith("clientId:")
        assert errors[904]["error"].startswith("data:")
        assert errors[901]["clientId"] == "c"
        [val_err] = await val_out.wait_for(lambda v: v["processInstanceId"] == 905)
        assert codec.loads(val_err.value)["error"].startswith("otp:")

        deadline = asyncio.get_running_loop().time() + 30
        while (
            len(dlq.records) < len(bad_no_pid) + 1 and asyncio.get_running_loop().time() < deadline
        ):
            await asyncio.sleep(0.1)
        assert len(dlq.records) == len(bad_no_pid) + 1
        reasons = [dict(r.headers)["x-dlq-reason"].decode() for r in dlq.records]
        assert any("not valid JSON" in r for r in reasons) and any("over the" in r for r in reasons)
        assert all(dict(r.headers)["x-dlq-source"].count(b"/") == 2 for r in dlq.records)
        assert {r.value for r in dlq.records} >= set(bad_no_pid)
        from_generate = [
            r
            for r in dlq.records
            if dict(r.headers)["x-dlq-source"].startswith(
                topics["KAFKA_TOPIC_OTP_GENERATE_IN"].encode()
            )
        ]
        assert len(from_generate) == len(bad_no_pid)
        assert all(dict(r.headers).get("fxContext") == b"main:4" for r in from_generate)


async def test_metrics_count_what_was_sent(
    worker: Worker, sink: SmtpSink, kafka_bootstrap: str, suffix: str
):
    """/metrics (Prometheus text format) moves by exactly the requests a test sends."""
    import aiohttp
    from prometheus_client.parser import text_string_to_metric_families

    topics = topic_env(suffix)
    await ensure_templates(Api(worker.url))

    async def scrape() -> dict:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{worker.url}/metrics") as resp:
                assert resp.status == 200 and resp.content_type == "text/plain"
                text = await resp.text()
        samples = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return samples

    def value(samples, name, **labels):
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    gen_topic = topics["KAFKA_TOPIC_OTP_GENERATE_IN"]
    before = await scrape()
    async with (
        Kafka(kafka_bootstrap) as kafka,
        Collector(kafka_bootstrap, topics["KAFKA_TOPIC_OTP_GENERATE_OUT"]) as gen_out,
    ):
        for i in range(7):
            await kafka.send(gen_topic, gen(5000 + i, f"metrics-{i}"))
        await kafka.send(gen_topic, gen(5007, "metrics-x", templateName="nope"))
        await kafka.send(gen_topic, gen(5008, "metrics-y", channel="FAX"))
        await kafka.send(gen_topic, b"garbage")
        await gen_out.wait_for(lambda v: 5000 <= v["processInstanceId"] <= 5008, count=9)
    after = await scrape()
    for _ in range(20):  # the DLQ count lands right after the DLQ send; give it a moment
        if value(after, "otp_requests_total", topic=gen_topic, outcome="dead_letter") >= 1:
            break
        await asyncio.sleep(0.1)
        after = await scrape()

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("otp_requests_total", topic=gen_topic, outcome="sent") == 7
    assert delta("otp_requests_total", topic=gen_topic, outcome="not_sent") == 1
    assert delta("otp_requests_total", topic=gen_topic, outcome="malformed") == 1
    assert delta("otp_requests_total", topic=gen_topic, outcome="dead_letter") == 1
    assert delta("otp_sends_total", channel="MAIL", outcome="delivered") == 7
    assert delta("otp_processing_seconds_count", kind="generate") == 9
    assert value(after, "otp_ready") == 1 and value(after, "otp_recovery_in_progress") == 0
    assert value(after, "otp_templates") >= 4
    assert any(name == "otp_consumer_lag" for name, _ in after)


async def test_faust_builtin_views_are_not_exposed(worker: Worker):
    """Faust would serve table contents (/table/otps/) and routing without auth: switched off."""
    for path in ("/table/", "/table/otps/", "/router/", "/router/topics"):
        status, body = await Api(worker.url, token=None).call("GET", path)
        assert status == 404, (path, body)
        assert body["error"]


async def test_status_and_cancel_over_http(
    worker: Worker, sink: SmtpSink, kafka_bootstrap: str, suffix: str
):
    topics = topic_env(suffix)
    api = Api(worker.url)
    status, body = await api.call("POST", "/api/template", SEED_MAIL)
    assert status in (201, 409), body
    generate = {
        "processInstanceId": 7001,
        "templateName": "otpMail",
        "channel": "MAIL",
        "recipient": "status.person@example.com",
        "clientId": "status-client",
    }
    async with (
        Kafka(kafka_bootstrap) as kafka,
        Collector(kafka_bootstrap, topics["KAFKA_TOPIC_OTP_GENERATE_OUT"]) as gen_out,
        Collector(kafka_bootstrap, topics["KAFKA_TOPIC_OTP_VALIDATE_OUT"]) as val_out,
    ):
        await kafka.send(topics["KAFKA_TOPIC_OTP_GENERATE_IN"], generate)
        await gen_out.wait_for(lambda v: v["processInstanceId"] == 7001)
        code = code_from(sink.to("status.person@example.com")[0])
        status, shown = await api.call("GET", "/api/otp/status-client")
        assert status == 200, shown
        assert shown["status"] == "pending" and shown["receiver"] == "s***@example.com"
        assert shown["attemptsRemaining"] == 5 and shown["sendsInWindow"] == 1
        assert code not in str(shown)
        status, canceled = await api.call("POST", "/api/otp/status-client/cancel")
        assert (status, canceled["status"]) == (200, "canceled")
        validate = {"processInstanceId": 7002, "clientId": "status-client", "channel": "MAIL"}
        await kafka.send(topics["KAFKA_TOPIC_OTP_VALIDATE_IN"], {**validate, "otp": code})
        [reply] = await val_out.wait_for(lambda v: v["processInstanceId"] == 7002)
        assert codec.loads(reply.value)["error"] == "code canceled"
    status, body = await api.call("POST", "/api/otp/status-client/cancel")
    assert status == 409 and "canceled" in body["error"]
    status, body = await api.call("GET", "/api/otp/nobody-here")
    assert status == 404 and "nobody-here" in body["error"]
    status, body = await api.call("GET", "/api/otp/%20padded")
    assert status == 400 and body["details"][0]["field"] == "clientId"
    status, _ = await Api(worker.url, token="wrong").call("GET", "/api/otp/status-client")
    assert status == 401
