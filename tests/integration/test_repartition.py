"""Repartitioning live state: 4 partitions and 2 workers, then 8, and every code still works.

500 identifiers get live codes (50 of them at their send limit, 100 with two wrong attempts);
the workers are stopped; ``python -m app repartition --partitions 8`` moves the state; two
workers start with ``TOPIC_PARTITIONS=8``. Then every code validates, the wrong attempts are
still counted, a sixth send in the window is still refused, and templates still render.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from app.kafka_admin import partition_counts
from app.settings import Settings
from devtools.support import ROOT, Api, Collector, Kafka, Worker, topic_env, unique, worker_env
from tables import internal_topics
from tests.conftest import SmtpSink
from tests.integration.test_otp_lifecycle import val

pytestmark = pytest.mark.integration

IDENTIFIERS = 500
AT_LIMIT = range(50)  # five generates each: at OTP_MAX_SENDS
WRONG_TWICE = range(50, 150)  # two wrong attempts each
TEMPLATE = {
    "name": "otpMoved",
    "type": "MAIL",
    "subject": "code for [(${clientId})]",
    "body": "<p>code</p><p th:text='${otpValue}'></p>",
    "params": [{"key": "clientId", "mandatory": True}, {"key": "otpValue", "mandatory": True}],
}
SUBJECT = re.compile(r"code for (\S+)")
CODE = re.compile(r"<p>(\d{6})</p>")


def command(
    env: dict[str, str], partitions: int, *options: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", "repartition", "--partitions", str(partitions), *options],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def generate(n: int, client: str) -> dict:
    return {
        "processInstanceId": n,
        "templateName": "otpMoved",
        "channel": "MAIL",
        "recipient": f"{client}@moved.example",
        "clientId": client,
    }


async def test_live_codes_survive_a_move_from_4_to_8_partitions(
    kafka_bootstrap: str, smtp_sink: SmtpSink, tmp_path: Path
):
    suffix = unique("repart")
    topics = topic_env(suffix)
    env = worker_env(kafka_bootstrap, suffix, smtp_sink.port, TOPIC_PARTITIONS="4")

    def workers(partitions: int) -> list[Worker]:
        return [
            Worker(
                env={**env, "TOPIC_PARTITIONS": str(partitions)},
                data_dir=tmp_path / name / "data",  # the same stores before and after
                log_path=tmp_path / name / f"worker-{partitions}.log",
            ).start()
            for name in ("a", "b")
        ]

    clients = [f"mv-{i}" for i in range(IDENTIFIERS)]
    running = workers(4)
    try:
        await asyncio.gather(*(w.wait_ready(timeout=150) for w in running))
        status, body = await Api(running[0].url).call("POST", "/api/template", TEMPLATE)
        assert status == 201, body
        async with (
            Kafka(kafka_bootstrap) as kafka,
            Collector(kafka_bootstrap, topics["KAFKA_TOPIC_OTP_GENERATE_OUT"]) as gen_out,
            Collector(kafka_bootstrap, topics["KAFKA_TOPIC_OTP_VALIDATE_OUT"]) as val_out,
        ):
            pid = 0
            for round_ in range(5):
                batch = clients if round_ == 0 else [clients[i] for i in AT_LIMIT]
                for client in batch:
                    pid += 1
                    await kafka.send(topics["KAFKA_TOPIC_OTP_GENERATE_IN"], generate(pid, client))
                # in order per identifier: the next round after this one's replies
                replies = await gen_out.replies(set(range(pid - len(batch) + 1, pid + 1)), 120)
                assert all(r["otpSent"] for r in replies.values()), replies
            for attempt in range(2):
                for i in WRONG_TWICE:
                    await kafka.send(
                        topics["KAFKA_TOPIC_OTP_VALIDATE_IN"],
                        val(10_000 + attempt * 1000 + i, clients[i], "wrong!"),
                    )
            wrong = await val_out.replies(
                {10_000 + a * 1000 + i for a in (0, 1) for i in WRONG_TWICE}, 120
            )
            assert all(r["error"] == "invalid code" for r in wrong.values())

        codes: dict[str, str] = {}
        for message in list(smtp_sink.messages):
            client = SUBJECT.search(message["Subject"]).group(1)
            body = message.get_body(preferencelist=("html",)).get_content()
            codes[client] = CODE.search(body).group(1)  # the last mail's code is the live one
        assert set(codes) == set(clients)

        refused = command(env, 8, "--wait", "0")  # the workers still run
        assert refused.returncode == 1 and "stop every worker" in refused.stderr, refused
        for worker in running:
            assert worker.stop(30) == 0
        moved = command(env, 8)
        assert moved.returncode == 0, moved.stderr
        print(f"\nrepartition: {moved.stdout.strip().splitlines()[-1]}")
        assert "moved to 8 partitions" in moved.stdout
        again = command(env, 8)
        assert again.returncode == 0 and "nothing to do" in again.stdout, again

        settings = Settings.from_env({**env, "TOPIC_PARTITIONS": "8"})
        counts = await partition_counts(kafka_bootstrap, internal_topics(settings))
        assert set(counts.values()) == {8}, counts

        running = workers(8)
        await asyncio.gather(*(w.wait_ready(timeout=150) for w in running))
        async with (
            Kafka(kafka_bootstrap) as kafka,
            Collector(kafka_bootstrap, topics["KAFKA_TOPIC_OTP_GENERATE_OUT"]) as gen_out,
            Collector(kafka_bootstrap, topics["KAFKA_TOPIC_OTP_VALIDATE_OUT"]) as val_out,
        ):
            # The wrong attempts were kept: a third one leaves two.
            for i in WRONG_TWICE:
                await kafka.send(
                    topics["KAFKA_TOPIC_OTP_VALIDATE_IN"],
                    val(20_000 + i, clients[i], "nope!!"),
                )
            third = await val_out.replies({20_000 + i for i in WRONG_TWICE}, 120)
            assert {r["attemptsRemaining"] for r in third.values()} == {2}, third
            # Every code validates.
            for i, client in enumerate(clients):
                await kafka.send(
                    topics["KAFKA_TOPIC_OTP_VALIDATE_IN"],
                    val(30_000 + i, client, codes[client]),
                )
            right = await val_out.replies({30_000 + i for i in range(IDENTIFIERS)}, 120)
            failed = [r for r in right.values() if not r["otpValid"]]
            assert not failed, failed[:5]
            # The send limit held: a sixth code in the window is refused ...
            for i in AT_LIMIT:
                await kafka.send(
                    topics["KAFKA_TOPIC_OTP_GENERATE_IN"], generate(40_000 + i, clients[i])
                )
            sixth = await gen_out.replies({40_000 + i for i in AT_LIMIT}, 120)
            assert not any(r["otpSent"] for r in sixth.values())
            assert all("too many" in r["error"] for r in sixth.values()), sixth
            # ... and the template still renders for everyone else.
            await kafka.send(topics["KAFKA_TOPIC_OTP_GENERATE_IN"], generate(50_000, "mv-new"))
            [fresh] = (await gen_out.replies({50_000}, 120)).values()
            assert fresh["otpSent"] is True, fresh
    finally:
        for worker in running:
            worker.kill()
