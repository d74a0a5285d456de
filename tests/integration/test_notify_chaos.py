"""Two workers, a kill -9 during 1,000 notification requests: every request answered, no
receiver mailed twice (beyond the crash window the README names).

Each request goes to two receivers, so a request cut short by the kill (one receiver done, the
other not) is resumed by the surviving worker, which must mail only the one left.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from app import codec
from devtools.support import Api, Collector, Kafka, Worker, topic_env, unique, worker_env
from tests.conftest import SmtpSink
from tests.integration.test_scaling import ready_restarting_on_stall, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

REQUESTS = 1000
TEMPLATE = {
    "name": "notifyScale",
    "type": "MAIL",
    "subject": "ref [(${ref})]",
    "body": "<p>hello [(${ref})]</p>",
    "params": [{"key": "ref", "mandatory": True}],
}
SUBJECT = re.compile(r"ref (\d+)")


async def test_kill_one_of_two_workers_during_notifications(
    kafka_bootstrap: str, smtp_sink: SmtpSink, tmp_path: Path
):
    suffix = unique("nchaos")
    topics = topic_env(suffix)
    # DELIVERY_TIMEOUT_SECONDS: as in test_scaling, the sink's speed is not what is tested.
    env = worker_env(
        kafka_bootstrap,
        suffix,
        smtp_sink.port,
        TOPIC_PARTITIONS="4",
        DELIVERY_TIMEOUT_SECONDS="60",
    )

    def new_worker(name: str) -> Worker:
        return Worker(
            env=env, data_dir=tmp_path / name / "data", log_path=tmp_path / name / "worker.log"
        )

    workers = [new_worker(f"w{i}").start() for i in range(2)]
    restarts: list[Worker] = []
    try:
        await asyncio.gather(*(ready_restarting_on_stall(w, restarts) for w in workers))
        status, body = await Api(workers[0].url).call("POST", "/api/template", TEMPLATE)
        assert status == 201, body
        async with (
            Kafka(kafka_bootstrap) as kafka,
            Collector(kafka_bootstrap, topics["KAFKA_TOPIC_NOTIFICATION_INTERNAL_OUT"]) as out,
        ):

            async def produce() -> None:
                for i in range(REQUESTS):
                    request = {
                        "templateName": "notifyScale",
                        "channel": "MAIL",
                        "receivers": [f"a{i}@chaos.example", f"b{i}@chaos.example"],
                        "contentParams": {"ref": str(i)},
                    }
                    await kafka.send(
                        topics["KAFKA_TOPIC_NOTIFICATION_INTERNAL_IN"],
                        request,
                        key=str(i).encode(),
                        headers=[("processInstanceId", str(i).encode())],
                    )
                    if i % 50 == 49:
                        await asyncio.sleep(0.2)

            producing = asyncio.create_task(produce())
            await wait_until(lambda: len(out.records) >= REQUESTS // 4, 120, "first replies")
            workers[1].kill()
            killed_at = len(out.records)
            await producing

            def answered() -> int:
                return len({codec.loads(r.value)["processInstanceId"] for r in out.records})

            await wait_until(lambda: answered() >= REQUESTS, 180, "a reply to every request")
            await asyncio.sleep(2)  # late duplicates (redeliveries) arrive before counting

        replies = defaultdict(list)
        for record in out.records:
            reply = codec.loads(record.value)
            replies[reply["processInstanceId"]].append(reply)
        assert set(replies) == {str(i) for i in range(REQUESTS)}
        duplicates = sum(len(v) - 1 for v in replies.values())
        differing = [v for v in replies.values() if any(r != v[0] for r in v)]
        assert not differing, f"{len(differing)} duplicates differ, e.g. {differing[:3]}"
        failed = [v[0] for v in replies.values() if v[0]["error"] is not None]
        assert not failed, Counter(reply["error"] for reply in failed)

        mails = Counter(message["To"] for message in list(smtp_sink.messages))
        expected = {f"{p}{i}@chaos.example" for i in range(REQUESTS) for p in "ab"}
        assert set(mails) == expected, "a receiver got no mail"
        second_mails = sum(1 for n in mails.values() if n > 1)
        message_ids = defaultdict(set)
        for message in list(smtp_sink.messages):
            message_ids[message["To"]].add(message["Message-ID"])
        # A second mail is the same message: mail clients fold it into the first.
        assert all(len(ids) == 1 for ids in message_ids.values())
        print(
            f"\nnotify chaos: {REQUESTS} requests to 2 receivers each, {len(out.records)} replies "
            f"({duplicates} duplicates, all identical); worker killed after {killed_at} replies; "
            f"{sum(mails.values())} mails for {len(expected)} receivers, {second_mails} "
            f"receivers with a second mail; {len(restarts)} stalled recoveries restarted"
        )
        # The crash window (README, Guarantees): a mail accepted by the server in the
        # milliseconds before its row reached the changelog is sent again. How many fall in it
        # grows with the killed worker's mails per second: 2 in a run before the pipelined SMTP,
        # 3 to 7 since (2026-12-03); more than 1% of the receivers would be a wider window.
        assert second_mails <= 20
    finally:
        for w in workers:
            w.kill()
