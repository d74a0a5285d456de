"""The README's first command: `make run` brings everything up, and Ctrl-C takes it all down."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest

from devtools.support import ROOT, SEED_MAIL, Api, free_port

pytestmark = pytest.mark.integration


def processes_mentioning(marker: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if marker in line and "ps -eo" not in line]


def sample(metrics: str, name: str) -> float:
    """The value of one sample in Prometheus' text format."""
    [line] = [line for line in metrics.splitlines() if line.startswith(name + " ")]
    return float(line.rsplit(" ", 1)[1])


async def test_make_run_serves_an_otp_and_ctrl_c_stops_everything(tmp_path: Path):
    web_port, kafka_port, mail_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "WEB_PORT": str(web_port),
        "KAFKA_PORT": str(kafka_port),
        "KAFKA_CONTROLLER_PORT": str(free_port()),
        "KAFKA_DATA_DIR": str(tmp_path / "kafka"),
        "DATA_DIR": str(tmp_path / "data"),
        "MAIL_CATCHER_PORT": str(mail_port),
        "MAIL_CATCHER_DIR": str(tmp_path / "mail"),
    }
    for name in (
        "KAFKA_BOOTSTRAP_SERVERS",
        "NOTIFY_API_TOKEN",
        "OTP_HMAC_SECRET",
        "SMTP_HOST",
        "SMTP_PORT",
    ):
        env.pop(name, None)
    log = (tmp_path / "make-run.log").open("wb")
    proc = subprocess.Popen(
        ["make", "run"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        async with aiohttp.ClientSession() as session:
            while True:
                assert proc.poll() is None, (tmp_path / "make-run.log").read_text()
                try:
                    async with session.get(f"http://127.0.0.1:{web_port}/ready") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert time.monotonic() < deadline, (tmp_path / "make-run.log").read_text()
                await asyncio.sleep(0.3)
            async with session.get(f"http://127.0.0.1:{web_port}/health") as resp:
                assert await resp.json() == {"status": "ok"}

        output = (tmp_path / "make-run.log").read_text()
        token = (ROOT / ".local" / "dev-api-token").read_text().strip()
        assert token in output, "make run must print the development API token"

        # The README's quick start: a template over REST, a request as the engine sends it.
        status, _ = await Api(f"http://127.0.0.1:{web_port}", token=token).call(
            "POST", "/api/template", SEED_MAIL
        )
        assert status in (201, 409)
        send = subprocess.run(
            [
                str(ROOT / "scripts" / "send-request"),
                "generate",
                '{"processInstanceId": 7, "templateName": "otpMail", "channel": "MAIL", '
                '"recipient": "newcomer@example.com", "clientId": "42"}',
            ],
            cwd=ROOT,
            env={**env, "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{kafka_port}"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert '"otpSent":true' in send.stdout, send.stdout + send.stderr
        for _ in range(50):
            if list((tmp_path / "mail").glob("*.eml")):
                break
            await asyncio.sleep(0.1)
        [saved] = list((tmp_path / "mail").glob("*.eml"))
        assert "otp for 42" in saved.read_text()
        assert "to=newcomer@example.com" in (tmp_path / "make-run.log").read_text()

        # The latency histogram tells the truth: one generate, a sample of seconds.
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{web_port}/metrics") as resp:
                metrics = await resp.text()
        count = sample(metrics, 'otp_processing_seconds_count{kind="generate"}')
        assert count == 1
        assert 0 < sample(metrics, 'otp_processing_seconds_sum{kind="generate"}') < 5
        assert sample(metrics, 'otp_processing_seconds_bucket{kind="generate",le="5.0"}') == 1

        # A quiet first screen: the service's own lines, not Faust's and aiokafka's INFO.
        log_text = (tmp_path / "make-run.log").read_text()
        library_info = re.findall(r"\[INFO\] (?:faust|mode|aiokafka)[.:]", log_text)
        assert not library_info, f"{len(library_info)} library INFO lines in make run"
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    time.sleep(0.5)
    leftovers = processes_mentioning(str(tmp_path))
    assert not leftovers, leftovers
    assert not (tmp_path / "kafka" / "kafka.pid").exists()
