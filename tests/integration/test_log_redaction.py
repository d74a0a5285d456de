"""No credential in a worker's log, whoever logs it: a real worker, raw bad requests.

aiohttp's server logger wrote the bytes of a header line its parser refuses into the traceback
of an ERROR record ("Invalid header value char: b'Authorization: Bearer <token>\\x00'"); the
worker now answers and logs such a request itself (``app.runtime.http``), naming the header
and never quoting it. The test sends such requests over a raw socket (an HTTP client would
refuse to), then reads the whole log: a record of each must be there, the token must not.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import ConsumerRecord

from app import codec
from devtools.support import (
    SECRET,
    SEED_MAIL,
    TOKEN,
    Api,
    Collector,
    Kafka,
    Worker,
    topic_env,
    unique,
    worker_env,
)
from tests.conftest import SmtpSink
from tests.unit.test_provider_echo import EchoingServer

pytestmark = pytest.mark.integration

BAD_REQUESTS = {
    # The token, then a NUL: "Invalid header value char", the header line in the traceback.
    "nul-after-token": f"Authorization: Bearer {TOKEN}\x00",
    "ctl-after-token": f"Authorization: Bearer {TOKEN}\x01",
    # Not an Authorization header at all: only the configured token gives it away.
    "bad-header-name": f"X-{TOKEN}\x00bad name: v",
    # Over the field size limit: aiohttp logs the first 100 bytes of the value and "...", so
    # here just the first 12 characters of the token.
    "long-header": "X-Long: " + "a" * 90 + TOKEN + "a" * 9000,
    "long-authorization": f"Authorization: Bearer {TOKEN}" + "a" * 9000,
}


def raw_request(port: int, header_line: str) -> int:
    """Sends one request with ``header_line`` as it is; the status line's code (of a JSON
    answer, as every error of the API is, even those aiohttp gives before any view runs)."""
    request = f"GET /api/template HTTP/1.1\r\nHost: x\r\n{header_line}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request.encode("latin-1"))
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    status_line = answer.split(b"\r\n", 1)[0].decode("latin-1")
    assert status_line.startswith("HTTP/1."), answer[:200]
    assert b"\r\nContent-Type: application/json" in answer, answer[:300]
    return int(status_line.split()[1])


async def every_record(bootstrap: str, part: str) -> tuple[list[str], list[ConsumerRecord]]:
    """The topics whose name holds ``part``, and every record they hold now."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        names = sorted(t for t in await admin.list_topics() if part in t)
        described = await admin.describe_topics(names)
    finally:
        await admin.close()
    tps = [
        TopicPartition(topic["topic"], partition["partition"])
        for topic in described
        for partition in topic["partitions"]
    ]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        records: list[ConsumerRecord] = []
        while any([await consumer.position(tp) < end[tp] for tp in tps]):
            batches = await consumer.getmany(timeout_ms=500)
            records += [r for batch in batches.values() for r in batch]
        return names, records
    finally:
        await consumer.stop()


def leaks(text: str) -> list[str]:
    """Any 12 characters of the token, the token's reprs, the HMAC key, found in ``text``."""
    pieces = {TOKEN[i : i + 12] for i in range(len(TOKEN) - 11)}
    pieces |= {repr(TOKEN)[1:-1], repr(TOKEN.encode())[2:-1], SECRET}
    return sorted(p for p in pieces if p in text)


@pytest.mark.parametrize("log_format", ["json", "text"])
async def test_bad_requests_leave_no_token_in_the_log(
    kafka_bootstrap: str, smtp_sink: SmtpSink, tmp_path: Path, log_format: str
):
    env = worker_env(kafka_bootstrap, unique("redact"), smtp_sink.port, LOG_FORMAT=log_format)
    worker = Worker(env=env, data_dir=tmp_path / "data", log_path=tmp_path / "worker.log")
    worker.start()
    try:
        await worker.wait_ready()
        statuses = {name: raw_request(worker.port, line) for name, line in BAD_REQUESTS.items()}
        assert all(400 <= s < 500 for s in statuses.values()), statuses
        wrong, _ = await Api(worker.url, token="wrong-" + TOKEN).call("GET", "/api/template")
        right, _ = await Api(worker.url).call("GET", "/api/template")
        assert (wrong, right) == (401, 200)
    finally:
        worker.stop()

    log = worker.log_path.read_text(errors="replace")
    # Evidence that each refused request was logged, so this proves it is told, not silence.
    refused = "refused a malformed HTTP request from 127.0.0.1"
    assert log.count(refused) >= len(BAD_REQUESTS), log[-3000:]
    for evidence in ("Invalid header value char", "Got more than 8190 bytes", "(Authorization)"):
        assert evidence in log, evidence
    if log_format == "json":
        records = [codec.loads(line) for line in log.splitlines() if line.startswith("{")]
        errors = [r for r in records if r["logger"] == "app.runtime.http"]
        assert len(errors) >= len(BAD_REQUESTS) and all(r["level"] == "WARNING" for r in errors)
        # The same check on the decoded fields: JSON escapes would hide a \x00 from the above.
        log += "\n".join(str(value) for r in records for value in r.values())
    assert not leaks(log), leaks(log)


async def test_a_provider_quoting_the_code_back_leaves_it_nowhere(
    kafka_bootstrap: str, tmp_path: Path
):
    """A mail server that refuses the message quoting its Subject (a content filter), once
    for a while and then for good, with the code in the Subject: the code is in no log line
    (any logger's), reply, event or record of any of the worker's topics, changelogs included."""
    server = EchoingServer(451, 554)
    server.controller.start()
    suffix = unique("echo")
    topics = topic_env(suffix)
    env = worker_env(kafka_bootstrap, suffix, server.port, LOG_FORMAT="json")
    worker = Worker(env=env, data_dir=tmp_path / "data", log_path=tmp_path / "worker.log")
    worker.start()
    try:
        await worker.wait_ready()
        template = {
            **SEED_MAIL,
            "name": "codeInSubject",
            "subject": "[(${otpValue})] is your code, [(${clientId})]",
        }
        status, body = await Api(worker.url).call("POST", "/api/template", template)
        assert status == 201, body
        request = {
            "processInstanceId": 1,
            "templateName": "codeInSubject",
            "channel": "MAIL",
            "recipient": "echo@example.com",
            "clientId": "echo-1",
        }
        async with (
            Kafka(kafka_bootstrap) as kafka,
            Collector(kafka_bootstrap, topics["KAFKA_TOPIC_OTP_GENERATE_OUT"]) as out,
        ):
            await kafka.send(topics["KAFKA_TOPIC_OTP_GENERATE_IN"], request)
            [reply] = await out.wait_for(lambda v: v["processInstanceId"] == 1, timeout=60)
        answer = codec.loads(reply.value)
        assert answer["otpSent"] is False and "554" in answer["error"], answer
        names, stored = await every_record(kafka_bootstrap, suffix)
        assert any(n.endswith("-changelog") for n in names) and len(names) > 8, names
    finally:
        worker.stop()
        server.controller.stop()
    [code] = set(re.findall(r"\b\d{6}\b", " ".join(server.subjects)))
    assert len(server.subjects) == 2 and all(code in s for s in server.subjects)
    log = worker.log_path.read_text(errors="replace")
    assert "451" in log  # the retry was logged, without the provider's text
    assert code not in log
    for record in stored:
        text = b" ".join([record.key or b"", record.value or b""])
        text += b" ".join(v or b"" for _, v in record.headers)
        assert code.encode() not in text, (record.topic, record.offset)
