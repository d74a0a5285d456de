"""A kill -9 between the provider's "accepted" and the row reaching Kafka: the code still works.

Two workers share 1,000 generate requests, one identifier each, and each worker has its own
SMTP server. Worker A's server kills worker A with SIGKILL while it accepts A's 150th mail,
before answering it: that mail is delivered, and nothing of it is recorded, which is the crash
window the README names. Worker B takes over A's partitions and handles A's unfinished
requests again, so some identifiers receive two mails. Both must carry the same code (and the
same Message-ID), that code must validate, and no identifier may have used up more than the one
send its one request allows. The events topic holds each request's ``otp.sent`` and
``otp.validated`` under one ``eventId`` each: no step lost with the killed worker, and only a
step of the crash window (an identifier that got two mails) may appear twice.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
import re
import signal
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from app import codec
from devtools.support import Api, Collector, Kafka, Worker, topic_env, unique, worker_env
from tests.conftest import SmtpSink
from tests.integration.test_scaling import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

REQUESTS = 1000
KILL_AT = 150  # the mail of worker A's during which A is killed
TEMPLATE = {
    "name": "otpRedelivery",
    "type": "MAIL",
    "subject": "your code",
    "body": "<p>code</p><p th:text='${otpValue}'></p>",
    "params": [{"key": "otpValue", "mandatory": True}],
}
CODE = re.compile(r"<p>(\d{6})</p>")


class KillingSink(SmtpSink):
    """An SMTP server that kills its worker (SIGKILL) while it accepts mail number ``kill_at``:
    the message is kept, the worker never hears that it was."""

    def __init__(self, kill_at: int | None) -> None:
        super().__init__()
        self.kill_at = kill_at
        self.victim: Worker | None = None
        self.killed = False

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self._lock:
            self.messages.append(message)  # type: ignore[arg-type]
            count = len(self.messages)
        if count == self.kill_at and self.victim is not None and self.victim.proc is not None:
            os.killpg(self.victim.proc.pid, signal.SIGKILL)
            self.killed = True
        return "250 OK"


async def sends_in_window(api: Api, clients: list[str]) -> dict[str, int]:
    lanes = asyncio.Semaphore(16)

    async def one(client: str) -> tuple[str, int]:
        async with lanes:
            status, body = await api.call("GET", f"/api/otp/{client}")
        assert status == 200, (client, body)
        return client, body["sendsInWindow"]

    return dict(await asyncio.gather(*(one(c) for c in clients)))


async def test_a_redelivered_generate_sends_the_code_of_the_first_mail(
    kafka_bootstrap: str, tmp_path: Path
):
    suffix = unique("redeliver")
    topics = topic_env(suffix)
    sinks = [KillingSink(KILL_AT), KillingSink(None)]
    for sink in sinks:
        sink.controller.start()
    workers = [
        Worker(
            env=worker_env(kafka_bootstrap, suffix, sink.port, DELIVERY_TIMEOUT_SECONDS="60"),
            data_dir=tmp_path / name / "data",
            log_path=tmp_path / name / "worker.log",
        )
        for name, sink in zip("ab", sinks, strict=True)
    ]
    sinks[0].victim = workers[0]
    try:
        for worker in workers:
            worker.start()
        await asyncio.gather(*(w.wait_ready(timeout=150) for w in workers))
        api = Api(workers[1].url)
        status, body = await api.call("POST", "/api/template", TEMPLATE)
        assert status == 201, body
        clients = [f"rd-{i}" for i in range(REQUESTS)]
        async with (
            Kafka(kafka_bootstrap) as kafka,
            Collector(kafka_bootstrap, topics["KAFKA_TOPIC_OTP_GENERATE_OUT"]) as gen_out,
            Collector(kafka_bootstrap, topics["KAFKA_TOPIC_OTP_VALIDATE_OUT"]) as val_out,
            Collector(kafka_bootstrap, topics["KAFKA_TOPIC_NOTIFICATION_EVENTS"]) as events,
        ):
            for i, client in enumerate(clients):
                request = {
                    "processInstanceId": i,
                    "templateName": "otpRedelivery",
                    "channel": "MAIL",
                    "recipient": f"{client}@example.com",
                    "clientId": client,
                }
                await kafka.send(topics["KAFKA_TOPIC_OTP_GENERATE_IN"], request)
                if i % 50 == 49:
                    await asyncio.sleep(0.2)

            await gen_out.replies(set(range(REQUESTS)), 240)
            await asyncio.sleep(2)  # late redeliveries
            assert sinks[0].killed, "worker A sent fewer mails than the kill waits for"
            not_sent = [
                reply
                for reply in map(codec.loads, (r.value for r in gen_out.records))
                if not reply["otpSent"]
            ]
            assert not not_sent, not_sent[:3]

            mails: dict[str, list[Any]] = defaultdict(list)
            for sink in sinks:
                for message in list(sink.messages):
                    mails[message["To"].split("@")[0]].append(message)
            assert set(mails) == set(clients), "an identifier got no mail"
            crossed = {client: found for client, found in mails.items() if len(found) > 1}
            codes = {}
            for client, found in mails.items():
                body = found[0].get_body(preferencelist=("html",)).get_content()
                codes[client] = CODE.search(body).group(1)
                for other in found[1:]:
                    again = other.get_body(preferencelist=("html",)).get_content()
                    assert CODE.search(again).group(1) == codes[client], client
                    assert other["Message-ID"] == found[0]["Message-ID"], client

            sends = await sends_in_window(api, clients)
            over = {client: n for client, n in sends.items() if n > 1}
            assert not over, f"identifiers charged a send twice: {list(over.items())[:5]}"

            for i, client in enumerate(clients):
                request = {
                    "processInstanceId": 10_000 + i,
                    "clientId": client,
                    "channel": "MAIL",
                    "otp": codes[client],
                }
                await kafka.send(topics["KAFKA_TOPIC_OTP_VALIDATE_IN"], request)
            validations = await val_out.replies({10_000 + i for i in range(REQUESTS)}, 120)

            # The delivery events: each step once, under one eventId, the killed worker's too.
            def steps() -> dict[tuple[str, str], list[str]]:
                found: dict[tuple[str, str], list[str]] = defaultdict(list)
                for record in list(events.records):
                    event = codec.loads(record.value)
                    found[(event["clientId"], event["type"])].append(event["eventId"])
                return found

            expected = {(c, t) for c in clients for t in ("otp.sent", "otp.validated")}
            await wait_until(lambda: expected <= set(steps()), 60, "every step's event")
            await asyncio.sleep(1)
            found = steps()
            assert set(found) == expected, set(found) - expected
            forked = {step: ids for step, ids in found.items() if len(set(ids)) > 1}
            assert not forked, f"a step under two eventIds: {list(forked.items())[:3]}"
            # A repeat is the crash window's: A's event reached Kafka, its row did not, and B
            # did the step again (and so sent a second mail). Nothing else may repeat.
            repeated = {step for step, ids in found.items() if len(ids) > 1}
            outside = {step for step in repeated if step[1] != "otp.sent" or step[0] not in crossed}
            assert not outside, f"an event repeated outside the crash window: {sorted(outside)[:5]}"
        failed = [r for r in validations.values() if not r["otpValid"]]
        print(
            f"\nredelivery: {REQUESTS} generates, worker A killed during its mail {KILL_AT}; "
            f"{sum(map(len, mails.values()))} mails; {len(crossed)} identifiers with a second "
            f"mail (a redelivery that crossed a delivery), every one with the first mail's "
            f"code; {REQUESTS - len(failed)}/{REQUESTS} codes validated; "
            f"{len(repeated)} otp.sent events repeated under their eventId"
        )
        assert crossed, "no redelivery crossed a delivery: the kill missed its window"
        assert not failed, failed[:5]
    finally:
        for worker in workers:
            worker.kill()
        for sink in sinks:
            sink.controller.stop()
