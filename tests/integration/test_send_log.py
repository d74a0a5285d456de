"""The send log across workers: what one worker sent, the other answers for.

A generate, a wrong validate, a right validate and a notification to two receivers, handled by
whichever of two workers owns each key; both workers answer every query with every entry.
"""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import pytest

from app import codec
from app.records import iso_utc
from devtools.support import (
    SEED_MAIL,
    Api,
    Collector,
    Kafka,
    Worker,
    metric_total,
    topic_env,
    unique,
    worker_env,
)
from tests.conftest import SmtpSink
from tests.integration.test_notify_flow import example
from tests.integration.test_scaling import ready_restarting_on_stall

pytestmark = pytest.mark.integration

CODE = re.compile(r"<p>(\d{6})</p>")


async def query(api: Api, params: str) -> dict:
    status, body = await api.call("GET", f"/api/notifications?{params}")
    assert status == 200, body
    return body


STATUSES = ["sent", "validated"]  # of the person's two entries, newest first


async def swept(worker: Worker) -> float:
    """The worker's ``otp_send_log_swept_total``."""
    status, body = await Api(worker.url).call("GET", "/metrics")
    assert status == 200
    return metric_total(body.decode(), "otp_send_log_swept_total")


async def settled(api: Api, params: str, done) -> list[dict]:
    """The query's items once ``done`` says so: the log follows the events topic, moments
    behind."""
    items: list[dict] = []
    for _ in range(100):
        items = (await query(api, params))["items"]
        if done(items):
            return items
        await asyncio.sleep(0.2)
    raise AssertionError(f"{params}: {items}")


async def test_any_worker_answers_for_every_send(
    kafka_bootstrap: str, smtp_sink: SmtpSink, tmp_path: Path
):
    suffix = unique("log")
    topics = topic_env(suffix)
    env = worker_env(
        kafka_bootstrap,
        suffix,
        smtp_sink.port,
        TOPIC_PARTITIONS="4",
        SEND_LOG_SWEEP_INTERVAL_SECONDS="1",
    )
    workers = [
        Worker(env=env, data_dir=tmp_path / n / "data", log_path=tmp_path / n / "w.log").start()
        for n in ("w0", "w1")
    ]
    restarts: list[Worker] = []
    try:
        await asyncio.gather(*(ready_restarting_on_stall(w, restarts) for w in workers))
        for template in (SEED_MAIL, example("welcomeLetter.json")):
            status, body = await Api(workers[0].url).call("POST", "/api/template", template)
            assert status == 201, body
        people = [f"log.person{n}@example.com" for n in range(6)]
        async with (
            Kafka(kafka_bootstrap) as kafka,
            Collector(kafka_bootstrap, topics["KAFKA_TOPIC_OTP_GENERATE_OUT"]) as gen_out,
            Collector(kafka_bootstrap, topics["KAFKA_TOPIC_OTP_VALIDATE_OUT"]) as val_out,
            Collector(
                kafka_bootstrap, topics["KAFKA_TOPIC_NOTIFICATION_INTERNAL_OUT"]
            ) as notify_out,
        ):
            for n, person in enumerate(people):
                request = {
                    "processInstanceId": 500 + n,
                    "templateName": "otpMail",
                    "channel": "MAIL",
                    "recipient": person,
                    "clientId": f"log-client-{n}",
                }
                await kafka.send(topics["KAFKA_TOPIC_OTP_GENERATE_IN"], request)
            await gen_out.wait_for(lambda v: v["processInstanceId"] >= 500, count=len(people))
            code = CODE.search(
                smtp_sink.to(people[0])[0].get_body(preferencelist=("html",)).get_content()
            )[1]
            validate = {"processInstanceId": 600, "clientId": "log-client-0", "channel": "MAIL"}
            wrong = "000000" if code != "000000" else "111111"
            await kafka.send(topics["KAFKA_TOPIC_OTP_VALIDATE_IN"], {**validate, "otp": wrong})
            await val_out.wait_for(lambda v: v["otpValid"] is False)
            await kafka.send(topics["KAFKA_TOPIC_OTP_VALIDATE_IN"], {**validate, "otp": code})
            await val_out.wait_for(lambda v: v["otpValid"] is True)
            # ... and a notification to two receivers, the first of them the same person.
            notification = {**example("notify-welcome.json"), "receivers": people[:2]}
            await kafka.send(
                topics["KAFKA_TOPIC_NOTIFICATION_INTERNAL_IN"],
                notification,
                headers=[("processInstanceId", b"700")],
            )
            await notify_out.wait_for(lambda v: v["processInstanceId"] == "700")

        for worker in workers:  # each worker answers for every send, whichever handled it
            api = Api(worker.url)
            mine = f"receiver={people[0]}"
            items = await settled(api, mine, lambda e: [x["status"] for x in e] == STATUSES)
            letter, entry = items  # newest first
            assert [e["type"] for e in entry["events"]] == [
                "otp.sent",
                "otp.attempt_failed",
                "otp.validated",
            ]
            assert entry["clientId"] == "log-client-0" and entry["processInstanceId"] == 500
            assert [e["type"] for e in letter["events"]] == ["notification.sent"]
            assert letter["templateName"] == "welcomeLetter"
            theirs = f"receiver={people[1]}&templateName=welcomeLetter"
            [other] = await settled(api, theirs, lambda e: len(e) == 1)
            assert other["status"] == "sent" and other["processInstanceId"] == "700"
            [by_pid] = (await query(api, "processInstanceId=503"))["items"]
            assert by_pid["receiver"] == people[3]
            page = await query(api, "templateName=otpMail&limit=4")
            assert len(page["items"]) == 4 and page["next"]
            rest = await query(api, f"templateName=otpMail&limit=4&cursor={page['next']}")
            ids = [e["id"] for e in page["items"] + rest["items"]]
            assert len(ids) == len(set(ids)) == len(people) and rest["next"] is None
        # An entry past SEND_LOG_RETENTION_DAYS is swept from its partition's rows.
        old = {
            "eventId": "ev-old",
            "type": "otp.sent",
            "at": iso_utc(time.time() - 40 * 86400),
            "entryId": "entry-old",
            "receiver": "old.person@example.com",
            "channel": "MAIL",
            "status": "sent",
        }
        async with Kafka(kafka_bootstrap) as kafka:
            await kafka.send(
                topics["KAFKA_TOPIC_NOTIFICATION_EVENTS"], old, key=old["receiver"].encode()
            )
        for _ in range(100):
            if sum([await swept(w) for w in workers]) >= 1:
                break
            await asyncio.sleep(0.2)
        assert sum([await swept(w) for w in workers]) == 1
        # A sweep written to the internal topic by anyone else, cutting at the end of time,
        # never cuts later than the retention: every entry stays.
        forged = codec.dumps({"k": "x", "cutoff": "9999-12-31T00:00:00Z"})
        async with Kafka(kafka_bootstrap) as kafka:
            assert kafka.producer is not None
            for partition in range(4):
                await kafka.producer.send_and_wait(
                    f"{env['APP_ID']}-log-queries", forged, partition=partition
                )
        await asyncio.sleep(3)  # the timer's sweeps, every second, come after the forged ones
        assert sum([await swept(w) for w in workers]) == 1
        mine = f"receiver={people[0]}"
        assert [x["status"] for x in (await query(Api(workers[1].url), mine))["items"]] == STATUSES
        assert (await query(Api(workers[0].url), "receiver=old.person@example.com"))["items"] == []
        status, body = await Api(workers[1].url).call("GET", "/api/notifications?limit=9999")
        assert status == 400 and body["details"][0]["field"] == "limit"
        status, _ = await Api(workers[1].url, token="nope").call("GET", "/api/notifications")
        assert status == 401
    finally:
        for w in workers:
            w.kill()
