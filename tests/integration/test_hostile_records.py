"""Hostile Kafka input against a real worker: every record ends as a reply or a dead letter.

No record may stop a worker (a poison pill would stop the whole group: every replacement dies
on the same uncommitted record), every one is answered or dead-lettered, and the committed
offsets reach the end of the topics.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from app import codec
from devtools.support import SEED_MAIL, SEED_SMS, Api, Collector, Kafka, Worker, unique, worker_env
from tests.conftest import SmtpSink
from tests.fakes.hostile import send_raw

pytestmark = pytest.mark.integration

PARTITIONS = 4
CODE_IN_MAIL = re.compile(r"<p>(\d{6})</p>")
PAYMENT_MAIL = {
    **SEED_MAIL,
    "name": "payMail",
    "subject": "Confirm your payment",
    "body": "<p>Pay [[${amount}]] to [[${payee}]] with code <p>[(${otpValue})]</p></p>",
    "params": [{"key": "otpValue", "mandatory": True}],
}


@pytest.fixture(scope="module")
def sink() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    sink.controller.start()
    yield sink
    sink.controller.stop()


@pytest.fixture(scope="module")
def env(kafka_bootstrap: str, sink: SmtpSink) -> dict[str, str]:
    return worker_env(
        kafka_bootstrap,
        unique("hostile"),
        sink.port,
        SMS_PROVIDER="kafka",
        SMS_ALLOWED_COUNTRIES="RO,DE",
        KAFKA_TOPIC_NOTIFICATION_EXTERNAL_OUT=f"test.{unique('sms')}.external.out",
    )


@pytest.fixture(scope="module")
def worker(env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    base: Path = tmp_path_factory.mktemp("hostile")
    w = Worker(env=env, data_dir=base / "data", log_path=base / "worker.log").start()
    w.wait_ready_sync()
    yield w
    w.stop()


@pytest.fixture(scope="module")
def templates(worker: Worker) -> None:
    async def create() -> None:
        api = Api(worker.url)
        for template in (SEED_MAIL, SEED_SMS, PAYMENT_MAIL):
            status, body = await api.call("POST", "/api/template", template)
            assert status in (201, 409), body

    asyncio.run(create())


def gen(pid: Any, client: Any, recipient: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "processInstanceId": pid,
        "templateName": "otpMail",
        "channel": "MAIL",
        "recipient": recipient or f"{client}@example.com",
        "clientId": client,
        **extra,
    }


async def committed_to_end(bootstrap: str, group: str, topics: list[str], timeout: float) -> None:
    """Wait until the group's committed offsets reach the end of every partition (lag 0)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in range(PARTITIONS)]
        deadline = time.monotonic() + timeout
        while True:
            ends = await consumer.end_offsets(tps)
            behind = {}
            for tp in tps:
                committed = await consumer.committed(tp) or 0
                if committed < ends[tp]:
                    behind[tp] = (committed, ends[tp])
            if not behind:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"offsets not committed to the end: {behind}")
            await asyncio.sleep(0.5)
    finally:
        await consumer.stop()


def alive(worker: Worker) -> None:
    assert worker.proc is not None and worker.proc.poll() is None, worker.log_tail()


async def test_undecodable_header_name_is_dead_lettered_and_the_stream_goes_on(
    worker: Worker, env: dict[str, str], kafka_bootstrap: str, templates: None, sink: SmtpSink
):
    pid = unique("poison")
    async with (
        Collector(kafka_bootstrap, env["KAFKA_TOPIC_OTP_DLQ"]) as dlq,
        Collector(kafka_bootstrap, env["KAFKA_TOPIC_OTP_GENERATE_OUT"]) as out,
    ):
        for topic in (env["KAFKA_TOPIC_OTP_GENERATE_IN"], env["KAFKA_TOPIC_OTP_VALIDATE_IN"]):
            await send_raw(
                kafka_bootstrap,
                topic,
                [
                    (
                        b"k",
                        codec.dumps(gen(pid, "poison-1")),
                        [(b"\xff\xfe", b"x"), (b"fxContext", b"main")],
                    )
                ],
            )
        async with Kafka(kafka_bootstrap) as kafka:
            await kafka.send(env["KAFKA_TOPIC_OTP_GENERATE_IN"], gen(f"{pid}-ok", "poison-2"))
        await out.wait_for(lambda v: v["processInstanceId"] == f"{pid}-ok")
        deadline = time.monotonic() + 30
        while len([r for r in dlq.records if pid.encode() in (r.value or b"")]) < 2:
            assert time.monotonic() < deadline, f"{len(dlq.records)} DLQ records"
            await asyncio.sleep(0.1)
    letters = [r for r in dlq.records if pid.encode() in (r.value or b"")]
    for letter in letters:
        headers = dict(letter.headers)
        assert b"not valid UTF-8" in headers["x-dlq-reason"]
        assert headers["x-dlq-reason"].startswith(b"undecodable record")
        assert headers["\\xff\\xfe"] == b"x" and headers["fxContext"] == b"main"
        assert codec.loads(letter.value) == gen(pid, "poison-1")  # the value, byte for byte
    assert not any(r for r in out.records if codec.loads(r.value)["processInstanceId"] == pid)
    alive(worker)
    await committed_to_end(
        kafka_bootstrap,
        env["APP_ID"],
        [env["KAFKA_TOPIC_OTP_GENERATE_IN"], env["KAFKA_TOPIC_OTP_VALIDATE_IN"]],
        30,
    )


async def test_requests_between_the_size_limits_are_answered_or_stubbed(
    worker: Worker, env: dict[str, str], kafka_bootstrap: str, templates: None
):
    """1 MB: over MAX_REQUEST_BYTES and Faust's producer limit, under the broker's."""
    pid = unique("big")
    padding = "x" * 1_000_100
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, max_request_size=1_048_000)
    await producer.start()
    async with (
        Collector(kafka_bootstrap, env["KAFKA_TOPIC_OTP_DLQ"]) as dlq,
        Collector(kafka_bootstrap, env["KAFKA_TOPIC_OTP_GENERATE_OUT"]) as out,
    ):
        try:
            topic = env["KAFKA_TOPIC_OTP_GENERATE_IN"]
            await producer.send_and_wait(topic, codec.dumps(gen(pid, "big-1", pad=padding)))
            no_pid = codec.dumps({"marker": pid, "pad": padding})
            await producer.send_and_wait(topic, no_pid, headers=[("fxContext", b"main")])
            big_header = [("h", b"y" * 1_000_100)]
            await producer.send_and_wait(
                topic, codec.dumps(gen(f"{pid}-h", "big-2")), headers=big_header
            )
        finally:
            await producer.stop()
        [reply] = await out.wait_for(lambda v: v["processInstanceId"] == pid)
        answer = codec.loads(reply.value)
        assert answer["otpSent"] is False and "over the 65536-byte limit" in answer["error"]
        stubs = await dlq.wait_for(lambda v: v.get("dlqStub") is True, count=2, timeout=30)
    sizes = sorted(codec.loads(s.value)["size"] for s in stubs)
    assert sizes[0] > 1_000_000
    for stub in stubs:
        value = codec.loads(stub.value)
        assert re.fullmatch(r".+/\d+/\d+", value["source"]) and "over the" in value["reason"]
        assert dict(stub.headers)["x-dlq-size"] == str(value["size"]).encode()
    alive(worker)
    await committed_to_end(kafka_bootstrap, env["APP_ID"], [env["KAFKA_TOPIC_OTP_GENERATE_IN"]], 30)


async def test_a_request_of_many_empty_headers_is_refused_for_its_size(
    worker: Worker, env: dict[str, str], kafka_bootstrap: str, templates: None
):
    """40,000 one-letter headers: 40 KB of names, 120 KB with their framing, over the 64 KB
    MAX_REQUEST_BYTES. Counted without the framing, the request was served, its headers copied
    into every hop and its reply; now it is dead-lettered (headers that large cannot go on a
    reply), with them, and the stream goes on."""
    pid = unique("headers")
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, max_request_size=1_048_000)
    await producer.start()
    async with (
        Collector(kafka_bootstrap, env["KAFKA_TOPIC_OTP_DLQ"]) as dlq,
        Collector(kafka_bootstrap, env["KAFKA_TOPIC_OTP_GENERATE_OUT"]) as out,
    ):
        try:
            topic = env["KAFKA_TOPIC_OTP_GENERATE_IN"]
            headers: list[tuple[str, bytes | None]] = [("h", None)] * 40_000
            await producer.send_and_wait(topic, codec.dumps(gen(pid, "hdr-1")), headers=headers)
        finally:
            await producer.stop()
        [letter] = await dlq.wait_for(lambda v: v.get("processInstanceId") == pid, timeout=30)
        async with Kafka(kafka_bootstrap) as kafka:  # the stream goes on
            await kafka.send(env["KAFKA_TOPIC_OTP_GENERATE_IN"], gen(f"{pid}-ok", "hdr-2"))
        await out.wait_for(lambda v: v["processInstanceId"] == f"{pid}-ok")
    reason = dict(letter.headers)["x-dlq-reason"]
    assert b"over the 65536-byte limit" in reason, reason
    assert len(letter.headers) == 40_002  # the request's headers, and the two marks
    assert not [r for r in out.records if codec.loads(r.value)["processInstanceId"] == pid]
    alive(worker)


async def test_bad_identifiers_and_deep_data_get_an_error_reply(
    worker: Worker, env: dict[str, str], kafka_bootstrap: str, templates: None
):
    pid = unique("ids")
    cases = {
        f"{pid}-1": (gen(0, " sl-3"), "clientId: has leading or trailing whitespace"),
        f"{pid}-2": (gen(0, "sl-3 "), "clientId: has leading or trailing whitespace"),
        f"{pid}-3": (gen(0, "sl-3\t"), "clientId: has leading or trailing whitespace"),
        f"{pid}-4": (gen(0, "\u00a0sl-3"), "clientId: has leading or trailing whitespace"),
        f"{pid}-5": (gen(0, "sl\u200b-3"), "clientId: contains control or invisible characters"),
        f"{pid}-6": (
            gen(0, "sl-3", data={"clientId": "sl-4"}),
            "data.clientId: differs from clientId: give the clientId once",
        ),
    }
    async with (
        Kafka(kafka_bootstrap) as kafka,
        Collector(kafka_bootstrap, env["KAFKA_TOPIC_OTP_GENERATE_OUT"]) as out,
    ):
        for case_pid, (request, _) in cases.items():
            await kafka.send(
                env["KAFKA_TOPIC_OTP_GENERATE_IN"], {**request, "processInstanceId": case_pid}
            )
        deep = b'{"n":' * 300 + b"1" + b"}" * 300
        raw = codec.dumps(gen(f"{pid}-deep", "deep-1", data={"d": "X"})).replace(b'"X"', deep)
        await kafka.send(env["KAFKA_TOPIC_OTP_GENERATE_IN"], raw)
        replies = await out.wait_for(lambda v: str(v["processInstanceId"]).startswith(pid), count=7)
    answers = {codec.loads(r.value)["processInstanceId"]: codec.loads(r.value) for r in replies}
    for case_pid, (_, error) in cases.items():
        assert answers[case_pid]["otpSent"] is False
        assert answers[case_pid]["error"] == error
    assert answers[f"{pid}-deep"]["error"] == "data: is nested more than 32 levels deep"
    alive(worker)


async def test_sms_countries_and_e164_normalisation(
    worker: Worker, env: dict[str, str], kafka_bootstrap: str, templates: None
):
    pid = unique("sms")
    sms = {"templateName": "otpSMS", "channel": "SMS"}
    async with (
        Kafka(kafka_bootstrap) as kafka,
        Collector(kafka_bootstrap, env["KAFKA_TOPIC_OTP_GENERATE_OUT"]) as out,
        Collector(kafka_bootstrap, env["KAFKA_TOPIC_NOTIFICATION_EXTERNAL_OUT"]) as sent,
    ):
        topic = env["KAFKA_TOPIC_OTP_GENERATE_IN"]
        await kafka.send(topic, {**gen(f"{pid}-ro", f"{pid}-a", "0040 712-345-678"), **sms})
        await kafka.send(topic, {**gen(f"{pid}-us", f"{pid}-b", "+1 415 555 0100"), **sms})
        await kafka.send(topic, {**gen(f"{pid}-bad", f"{pid}-c", "0712345678"), **sms})
        replies = await out.wait_for(lambda v: str(v["processInstanceId"]).startswith(pid), count=3)
        answers = {codec.loads(r.value)["processInstanceId"]: codec.loads(r.value) for r in replies}
        assert answers[f"{pid}-ro"]["otpSent"] is True, answers
        assert answers[f"{pid}-us"] == {
            **answers[f"{pid}-us"],
            "otpSent": False,
            "error": "SMS to US is not allowed on this service",
        }
        assert answers[f"{pid}-bad"]["error"].startswith("recipient must be a phone number")
        [message] = await sent.wait_for(lambda v: v["processInstanceId"] == f"{pid}-ro")
    assert codec.loads(message.value)["to"] == "+40712345678"


async def test_payment_code_is_bound_to_its_amount_and_payee(
    worker: Worker, env: dict[str, str], kafka_bootstrap: str, templates: None, sink: SmtpSink
):
    pid, client = unique("pay"), unique("payer")
    payment = {"templateName": "payMail", "amount": "250.00", "payee": "ACME Ltd"}
    async with (
        Kafka(kafka_bootstrap) as kafka,
        Collector(kafka_bootstrap, env["KAFKA_TOPIC_OTP_GENERATE_OUT"]) as gen_out,
        Collector(kafka_bootstrap, env["KAFKA_TOPIC_OTP_VALIDATE_OUT"]) as val_out,
    ):
        await kafka.send(env["KAFKA_TOPIC_OTP_GENERATE_IN"], gen(f"{pid}-0", client, **payment))
        await kafka.send(
            env["KAFKA_TOPIC_OTP_GENERATE_IN"],
            gen(f"{pid}-plain", f"{client}-x", amount=1, payee="x"),  # otpMail shows neither
        )
        replies = await gen_out.wait_for(
            lambda v: str(v["processInstanceId"]).startswith(pid), count=2
        )
        answers = {codec.loads(r.value)["processInstanceId"]: codec.loads(r.value) for r in replies}
        assert answers[f"{pid}-0"]["otpSent"] is True, answers
        assert "does not show the amount and payee" in answers[f"{pid}-plain"]["error"]
        [mail] = sink.to(f"{client}@example.com")
        html = mail.get_body(preferencelist=("html",)).get_content()
        assert "Pay 250 to ACME Ltd" in html
        code = CODE_IN_MAIL.search(html).group(1)

        def validate(n: int, **txn: Any) -> dict[str, Any]:
            return {
                "processInstanceId": f"{pid}-v{n}",
                "clientId": client,
                "channel": "MAIL",
                "otp": code,
                **txn,
            }

        for request in (
            validate(1, amount="250.01", payee="ACME Ltd"),
            validate(2),
            validate(3, amount=250, payee="ACME Ltd"),
        ):  # one key, one partition: handled in this order
            await kafka.send(env["KAFKA_TOPIC_OTP_VALIDATE_IN"], request, key=client.encode())
        replies = await val_out.wait_for(
            lambda v: str(v["processInstanceId"]).startswith(pid), count=3
        )
    answers = {codec.loads(r.value)["processInstanceId"]: codec.loads(r.value) for r in replies}
    assert answers[f"{pid}-v1"]["error"] == "code does not match the transaction"
    assert answers[f"{pid}-v2"]["error"] == "code does not match the transaction"
    assert answers[f"{pid}-v3"]["otpValid"] is True


def receiver_flood(pid: str, address: str) -> list[dict[str, Any]]:
    return [gen(f"{pid}-{i}", f"{pid}-client-{i}", address) for i in range(20)]


async def count_outcomes(collector: Collector, pid: str) -> tuple[int, list[str]]:
    replies = await collector.wait_for(
        lambda v: str(v["processInstanceId"]).startswith(pid), count=20, timeout=60
    )
    answers = [codec.loads(r.value) for r in replies]
    assert len({a["processInstanceId"] for a in answers}) == 20
    return sum(a["otpSent"] for a in answers), [a["error"] for a in answers if not a["otpSent"]]


async def test_twenty_client_ids_to_one_receiver_get_five_codes(
    worker: Worker, env: dict[str, str], kafka_bootstrap: str, templates: None, sink: SmtpSink
):
    pid = unique("pump")
    address = f"{pid}@example.com"
    async with (
        Kafka(kafka_bootstrap) as kafka,
        Collector(kafka_bootstrap, env["KAFKA_TOPIC_OTP_GENERATE_OUT"]) as out,
    ):
        for i, request in enumerate(receiver_flood(pid, address)):
            # One receiver, spelt several ways: still one receiver.
            spelt = [address, address.upper(), address.replace("@", "+promo@")][i % 3]
            await kafka.send(env["KAFKA_TOPIC_OTP_GENERATE_IN"], {**request, "recipient": spelt})
        sent, errors = await count_outcomes(out, pid)
    assert sent == 5
    assert len(errors) == 15
    assert all(e.startswith("too many codes sent to this receiver: retry in ") for e in errors)


async def test_receiver_limit_holds_across_two_workers(
    kafka_bootstrap: str, sink: SmtpSink, tmp_path: Path
):
    env = worker_env(kafka_bootstrap, unique("pump2"), sink.port)
    workers = [
        Worker(env=env, data_dir=tmp_path / f"data-{i}", log_path=tmp_path / f"w{i}.log").start()
        for i in range(2)
    ]
    try:
        for w in workers:
            await w.wait_ready()
        api = Api(workers[0].url)
        status, body = await api.call("POST", "/api/template", SEED_MAIL)
        assert status == 201, body
        deadline = time.monotonic() + 60
        for w in workers:
            while (await Api(w.url).call("GET", "/api/template/otpMail"))[0] != 200:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
        for w in workers:  # both own partitions once the group has settled
            await w.wait_ready()
        pid = unique("pump2")
        async with (
            Kafka(kafka_bootstrap) as kafka,
            Collector(kafka_bootstrap, env["KAFKA_TOPIC_OTP_GENERATE_OUT"]) as out,
        ):
            for i, request in enumerate(receiver_flood(pid, f"{pid}@example.com")):
                # Keys spread the requests over every partition, so both workers ingest them.
                await kafka.send(env["KAFKA_TOPIC_OTP_GENERATE_IN"], request, key=str(i).encode())
            sent, errors = await count_outcomes(out, pid)
        assert sent == 5 and len(errors) == 15
    finally:
        for w in workers:
            w.stop()


# -- any bytes at all -----------------------------------------------------------------------

header_names = st.binary(min_size=0, max_size=12)
records_strategy = st.lists(
    st.tuples(
        st.none() | st.binary(max_size=40),
        st.none()
        | st.binary(max_size=200)
        | st.builds(
            lambda pid, extra: codec.dumps({"processInstanceId": pid, **extra}),
            st.integers(1, 10**9),
            st.dictionaries(
                st.sampled_from(
                    ["clientId", "channel", "templateName", "recipient", "otp", "data"]
                ),
                st.none() | st.text(max_size=10) | st.integers(-(2**40), 2**40) | st.booleans(),
                max_size=6,
            ),
        ),
        st.lists(st.tuples(header_names, st.none() | st.binary(max_size=20)), max_size=4),
    ).filter(lambda record: record[0] is not None or record[1] is not None),  # aiokafka's rule
    min_size=30,
    max_size=30,
)


@settings(
    max_examples=2,
    deadline=None,
    phases=[Phase.generate],
    suppress_health_check=list(HealthCheck),
)
@given(records=records_strategy, validate=st.booleans())
def test_any_bytes_end_as_a_reply_or_a_dead_letter(
    worker: Worker, env: dict[str, str], kafka_bootstrap: str, templates: None, records, validate
):
    asyncio.run(_any_bytes(worker, env, kafka_bootstrap, records, validate))


async def _any_bytes(
    worker: Worker, env: dict[str, str], bootstrap: str, records: list[Any], validate: bool
) -> None:
    topic = env["KAFKA_TOPIC_OTP_VALIDATE_IN" if validate else "KAFKA_TOPIC_OTP_GENERATE_IN"]
    out_topic = env["KAFKA_TOPIC_OTP_VALIDATE_OUT" if validate else "KAFKA_TOPIC_OTP_GENERATE_OUT"]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    tps = [
        TopicPartition(t, p)
        for t in (topic, out_topic, env["KAFKA_TOPIC_OTP_DLQ"])
        for p in range(PARTITIONS)
    ]
    before = await consumer.end_offsets(tps)
    await send_raw(bootstrap, topic, records)
    deadline = time.monotonic() + 60
    try:
        while True:
            after = await consumer.end_offsets(tps)
            grew = sum(after[tp] - before[tp] for tp in tps if tp.topic != topic)
            if grew >= len(records):
                break
            assert time.monotonic() < deadline, f"{grew}/{len(records)} answered or dead-lettered"
            await asyncio.sleep(0.3)
    finally:
        await consumer.stop()
    assert grew == len(records)  # one outcome each, none twice
    alive(worker)
    await committed_to_end(bootstrap, env["APP_ID"], [topic], 30)


# -- hostile parameters and templates on the send path -------------------------------------

HELLO_MAIL = {
    **SEED_MAIL,
    "name": "helloMail",
    "subject": "Hi [(${name})]",
    "body": "<p>Hello [(${name})]</p><p>[(${otpValue})]</p>",
    "params": [{"key": "otpValue", "mandatory": True}],
}
LOOP_MAIL = {
    **SEED_MAIL,
    "name": "loopMail",
    "body": "{% for a in items %}{% for b in items %}x{% endfor %}{% endfor %}<p>[(${otpValue})]</p>",
    "params": [{"key": "otpValue", "mandatory": True}],
}


async def health_latencies(worker: Worker, stop: asyncio.Event) -> list[float]:
    """Seconds each ``GET /health`` took, polled until ``stop`` is set."""
    import aiohttp

    latencies: list[float] = []
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            started = time.monotonic()
            async with session.get(f"{worker.url}/health") as resp:
                assert resp.status == 200
            latencies.append(time.monotonic() - started)
            await asyncio.sleep(0.05)
    return latencies


async def test_hostile_parameters_never_stall_the_worker(
    worker: Worker, env: dict[str, str], kafka_bootstrap: str, templates: None, sink: SmtpSink
):
    api = Api(worker.url)
    for template in (HELLO_MAIL, LOOP_MAIL):
        status, body = await api.call("POST", "/api/template", template)
        assert status in (201, 409), body
    pid = unique("params")
    stop = asyncio.Event()
    poll = asyncio.create_task(health_latencies(worker, stop))
    async with (
        Kafka(kafka_bootstrap) as kafka,
        Collector(kafka_bootstrap, env["KAFKA_TOPIC_OTP_GENERATE_OUT"]) as out,
    ):
        topic = env["KAFKA_TOPIC_OTP_GENERATE_IN"]
        started = time.monotonic()
        # 48 KB of unclosed tags, printed unescaped: the plain-text part must stay linear.
        await kafka.send(
            topic, gen(f"{pid}-tags", f"{pid}-a", templateName="helloMail", name="<a " * 16_000)
        )
        await kafka.send(
            topic,
            gen(f"{pid}-ctl", f"{pid}-b", templateName="helloMail", name="Ann\x00\x1b[31m\x7f"),
        )
        # 25 million iterations asked for by the request's own data.
        await kafka.send(
            topic, gen(f"{pid}-loop", f"{pid}-c", templateName="loopMail", items=list(range(5000)))
        )
        replies = await out.wait_for(lambda v: str(v["processInstanceId"]).startswith(pid), count=3)
        elapsed = time.monotonic() - started
    stop.set()
    latencies = await poll
    answers = {codec.loads(r.value)["processInstanceId"]: codec.loads(r.value) for r in replies}
    assert answers[f"{pid}-tags"]["otpSent"] is True, answers
    assert answers[f"{pid}-ctl"]["otpSent"] is True, answers
    loop = answers[f"{pid}-loop"]
    assert loop["otpSent"] is False and "could not be rendered" in loop["error"], loop
    assert elapsed < 10, elapsed
    assert latencies and max(latencies) < 1.0, max(latencies)
    [mail] = sink.to(f"{pid}-b@example.com")
    assert mail["Subject"] == "Hi Ann[31m"
    alive(worker)
