"""The API document against the live API: schemathesis, run as a user runs it, finds nothing.

One real worker on the real broker, the two seed templates POSTed (as test_templates_api.py
does), a code generated for clientId ``42`` (the document's example, so that the OTP routes and
the send log answer with bodies, not only 404s) and Twilio callbacks on, so that every route is
in its document. Then
``st run <worker>/api/openapi.json --checks all`` with a fixed seed and a bounded number of
examples per operation, with the bearer token, and the configuration and custom check of
``tests/integration/contract/`` (the few refusals JSON Schema cannot state are judged against
the document's ``x-beyond-schema``, see checks.py). Any finding fails the test, with
schemathesis' report.

More examples for a bug hunt: ``OPENAPI_CONTRACT_EXAMPLES=200 pytest -k contract -s``; another
seed: ``OPENAPI_CONTRACT_SEED``; every request and answer as a HAR file:
``OPENAPI_CONTRACT_REPORT_DIR=/tmp/contract``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app import codec
from devtools.support import (
    ROOT,
    SEED_MAIL,
    SEED_SMS,
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

pytestmark = pytest.mark.integration

CONFIG = ROOT / "tests" / "integration" / "contract" / "schemathesis.toml"
SEED = int(os.environ.get("OPENAPI_CONTRACT_SEED", "7"))
# Per operation and phase; 25 keeps the module near 60 s on a loaded 2-core machine.
EXAMPLES = int(os.environ.get("OPENAPI_CONTRACT_EXAMPLES", "25"))
REPORT_DIR = os.environ.get("OPENAPI_CONTRACT_REPORT_DIR")


async def load(w: Worker, bootstrap: str, topics: dict[str, str]) -> None:
    """The seed templates, and one code sent to clientId 42 by mail."""
    api = Api(w.url)
    for template in (SEED_MAIL, SEED_SMS):
        status, body = await api.call("POST", "/api/template", template)
        assert status == 201, body
    generate = {
        "processInstanceId": 1,
        "templateName": "otpMail",
        "channel": "MAIL",
        "recipient": "contract@example.com",
        "clientId": "42",
    }
    async with (
        Kafka(bootstrap) as kafka,
        Collector(bootstrap, topics["KAFKA_TOPIC_OTP_GENERATE_OUT"]) as replies,
    ):
        await kafka.send(topics["KAFKA_TOPIC_OTP_GENERATE_IN"], generate)
        [reply] = await replies.wait_for(lambda v: v["processInstanceId"] == 1)
    assert codec.loads(reply.value)["otpSent"] is True, reply.value


@pytest.fixture(scope="module")
def worker(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    base, suffix, sink = tmp_path_factory.mktemp("contract-worker"), unique("oa"), SmtpSink()
    env = worker_env(
        kafka_bootstrap,
        suffix,
        sink.port,
        # Callbacks on, so that their route is in the document (off, it is not: a 404).
        TWILIO_AUTH_TOKEN="contract-test-twilio-token",
        PUBLIC_BASE_URL="https://otp.example.com",
    )
    sink.controller.start()
    w = Worker(env=env, data_dir=base / "data", log_path=base / "worker.log").start()
    try:
        w.wait_ready_sync()
        asyncio.run(load(w, kafka_bootstrap, topic_env(suffix)))
        yield w
    finally:
        w.stop()
        sink.controller.stop()
    log = w.log_path.read_text(errors="replace")
    assert "unhandled error" not in log, w.log_tail(80)


def schemathesis_command(url: str) -> list[str]:
    st = shutil.which("st", path=str(Path(sys.executable).parent))
    launcher = [st] if st else [sys.executable, "-m", "schemathesis.cli"]
    return [
        *launcher,
        "--config-file",
        str(CONFIG),
        "--no-color",
        "run",
        f"{url}/api/openapi.json",
        "--checks",
        "all",
        "--seed",
        str(SEED),
        "--max-examples",
        str(EXAMPLES),
        "--workers",
        "1",
        "--request-timeout",
        "30",
        "--header",
        f"Authorization: Bearer {TOKEN}",
        *(["--report", "har,junit", "--report-dir", REPORT_DIR] if REPORT_DIR else []),
    ]


def test_schemathesis_finds_nothing(worker: Worker):
    started = time.monotonic()
    proc = subprocess.run(
        schemathesis_command(worker.url),
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "120"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    report = proc.stdout + proc.stderr
    print(f"\n{report}\n(schemathesis: {time.monotonic() - started:.1f} s)")
    assert proc.returncode == 0, report
    summary = report[report.rfind("Test cases:") :]
    assert " passed" in summary and "found" not in summary, summary
