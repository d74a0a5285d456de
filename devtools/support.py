"""Helpers that drive the real thing for the tests and the bench: worker processes, the
Kafka broker, HTTP."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from app import codec

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "test-token-0123456789"
# The seed's two templates, verbatim (examples/ holds them for the README and the bench too).
SEED_MAIL = codec.loads((ROOT / "examples" / "otpMail.json").read_bytes())
SEED_SMS = codec.loads((ROOT / "examples" / "otpSMS.json").read_bytes())
SECRET = "test-hmac-secret-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


ADDED_REPLY_FIELDS = ("expiresAt", "attemptsRemaining")
_ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def flowx(reply: dict[str, Any]) -> dict[str, Any]:
    """An OTP reply's FlowX fields, after checking the ones this service adds are well-formed:
    the FlowX contract is compared exactly, the additions (``expiresAt``, ``attemptsRemaining``)
    by shape, since they depend on the clock."""
    expires = reply["expiresAt"]
    assert expires is None or _ISO_UTC.fullmatch(expires), reply
    if "otpValid" in reply:
        remaining = reply["attemptsRemaining"]
        assert remaining is None or (isinstance(remaining, int) and remaining >= 0), reply
    return {k: v for k, v in reply.items() if k not in ADDED_REPLY_FIELDS}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def topic_env(suffix: str) -> dict[str, str]:
    """Per-test topic names, so tests sharing the broker never read each other's messages."""
    return {
        "APP_ID": f"otp-test-{suffix}",
        "KAFKA_TOPIC_OTP_GENERATE_IN": f"test.{suffix}.generate.in",
        "KAFKA_TOPIC_OTP_GENERATE_OUT": f"ai.flowx.test.engine.receive.{suffix}.generate.out",
        "KAFKA_TOPIC_OTP_VALIDATE_IN": f"test.{suffix}.validate.in",
        "KAFKA_TOPIC_OTP_VALIDATE_OUT": f"ai.flowx.test.engine.receive.{suffix}.validate.out",
        "KAFKA_TOPIC_OTP_DLQ": f"test.{suffix}.dlq",
        "KAFKA_TOPIC_NOTIFICATION_INTERNAL_IN": f"test.{suffix}.notify.in",
        "KAFKA_TOPIC_NOTIFICATION_INTERNAL_OUT": f"ai.flowx.test.engine.receive.{suffix}.notify",
        "KAFKA_TOPIC_NOTIFICATION_EXTERNAL_OUT": f"test.{suffix}.external.out",
        "KAFKA_TOPIC_NOTIFICATION_EVENTS": f"test.{suffix}.events",
    }


@dataclass
class Worker:
    """One ``python -m app worker`` process with its own data dir and web port."""

    env: dict[str, str]
    data_dir: Path
    log_path: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    ready_statuses: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Worker:
        env = {**os.environ, **self.env, "WEB_PORT": str(self.port), "DATA_DIR": str(self.data_dir)}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app", "worker"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    async def wait_ready(self, timeout: float = 90.0) -> float:
        """Seconds until ``/ready`` answers 200; fails with the log tail if the worker died.

        Every status seen on the way is kept in ``ready_statuses``.
        """
        started = time.monotonic()
        self.ready_statuses = []
        async with aiohttp.ClientSession() as session:
            while time.monotonic() - started < timeout:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise AssertionError(
                        f"worker exited {self.proc.returncode}:\n{self.log_tail()}"
                    )
                try:
                    async with session.get(f"{self.url}/ready") as resp:
                        self.ready_statuses.append(resp.status)
                        if resp.status == 200:
                            return time.monotonic() - started
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
        raise AssertionError(f"worker not ready after {timeout}s:\n{self.log_tail()}")

    def wait_ready_sync(self, timeout: float = 90.0) -> float:
        """The same as :meth:`wait_ready`, for synchronous (module-scoped) fixtures."""
        import urllib.error
        import urllib.request

        started = time.monotonic()
        while time.monotonic() - started < timeout:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return time.monotonic() - started
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"worker not ready after {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(10)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def config_refusal(env: dict[str, str], timeout: float = 60.0) -> str:
    """Run ``python -m app worker`` with exactly ``env``; it must refuse to start the way an
    operator should see it (exit 2, one line on stderr, no traceback). Returns that line."""
    proc = subprocess.run(
        [sys.executable, "-m", "app", "worker"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def worker_env(bootstrap: str, suffix: str, smtp_port: int, **extra: str) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        **topic_env(suffix),
        "TOPIC_PARTITIONS": "4",
        "OTP_HMAC_SECRET": SECRET,
        "NOTIFY_API_TOKEN": TOKEN,
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp_port),
        "SMTP_SECURITY": "none",
        "MAIL_FROM_EMAIL": "otp@example.com",
        "LOG_LEVEL": "INFO",
        # Tests read Faust's own lines (where recovery starts) and keep them for diagnosis.
        "LIBRARY_LOG_LEVEL": "INFO",
        **extra,
    }


#: Named tokens of the scopes tests use, beside ``TOKEN`` (``NOTIFY_API_TOKEN``, named
#: ``default``, every scope): name -> (token, scopes).
SCOPED_TOKENS: dict[str, tuple[str, list[str]]] = {
    "reader": ("reader-token-0123456789", ["read"]),
    "editor": ("editor-token-0123456789", ["read", "edit"]),
    "importer": ("importer-token-0123456789", ["read", "import"]),
}


def write_tokens_file(path: Path) -> Path:
    """A ``NOTIFY_API_TOKENS_FILE`` holding :data:`SCOPED_TOKENS` by SHA-256, as operators
    write one."""
    tokens = [
        {"name": name, "sha256": hashlib.sha256(token.encode()).hexdigest(), "scopes": scopes}
        for name, (token, scopes) in SCOPED_TOKENS.items()
    ]
    path.write_bytes(codec.dumps({"tokens": tokens}))
    return path


def metric_total(text: str, name: str) -> float:
    """The sum of every sample of metric ``name`` (all its label sets) in Prometheus' text
    format; 0 when it has none."""
    total = 0.0
    for line in text.splitlines():
        if line.split("{", 1)[0].split(" ", 1)[0] == name:
            total += float(line.rsplit(" ", 1)[1])
    return total


class Api:
    """The template API as an operator's script would call it."""

    def __init__(self, base_url: str, token: str | None = TOKEN) -> None:
        self.base_url = base_url
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def call(
        self,
        method: str,
        path: str,
        json: Any = None,
        *,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        all_headers = {**self.headers, **(headers or {})}
        body = data
        if json is not None:
            body = codec.dumps(json)
            all_headers.setdefault("Content-Type", "application/json")
        async with aiohttp.ClientSession() as session:
            async with session.request(
                method, self.base_url + path, data=body, headers=all_headers
            ) as resp:
                raw = await resp.read()
                payload = (
                    codec.loads(raw) if raw and resp.content_type == "application/json" else raw
                )
                return resp.status, payload


class Kafka:
    """Produce requests and collect replies on the real broker."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.producer: AIOKafkaProducer | None = None

    async def __aenter__(self) -> Kafka:
        self.producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=1)
        await self.producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.producer is not None
        await self.producer.stop()

    async def send(
        self,
        topic: str,
        value: Any,
        *,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        assert self.producer is not None
        raw = value if isinstance(value, bytes) else codec.dumps(value)
        await self.producer.send_and_wait(topic, raw, key=key, headers=headers)


class Collector:
    """Reads a topic from the beginning in the background; tests wait for matching records."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.records: list[Any] = []
        self._task: asyncio.Task[None] | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def __aenter__(self) -> Collector:
        self._consumer = AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=self.bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            metadata_max_age_ms=1000,
        )
        await self._consumer.start()
        self._task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        assert self._consumer is not None
        async for record in self._consumer:
            self.records.append(record)

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None and self._consumer is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._consumer.stop()

    def values(self) -> list[Any]:
        return [codec.loads(r.value) for r in self.records]

    async def replies(self, pids: set[Any], timeout: float = 60.0) -> dict[Any, dict[str, Any]]:
        """The first reply to each of ``pids`` (by ``processInstanceId``), once every one has
        come; a redelivered duplicate counts once."""
        deadline = time.monotonic() + timeout
        found: dict[Any, dict[str, Any]] = {}
        read = 0
        while True:
            for record in self.records[read:]:
                reply = codec.loads(record.value)
                if reply.get("processInstanceId") in pids:
                    found.setdefault(reply["processInstanceId"], reply)
                read += 1
            if len(found) == len(pids):
                return found
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{len(found)}/{len(pids)} replies on {self.topic} after {timeout}s"
                )
            await asyncio.sleep(0.05)

    async def wait_for(
        self, predicate: Callable[[Any], bool], *, count: int = 1, timeout: float = 30.0
    ) -> list[Any]:
        """Records whose JSON value matches, once at least ``count`` arrived."""
        deadline = time.monotonic() + timeout
        while True:
            found = [r for r in self.records if predicate(codec.loads(r.value))]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{len(found)}/{count} matching records on {self.topic} after {timeout}s; "
                    f"saw {len(self.records)} records"
                )
            await asyncio.sleep(0.05)


class OffersPipelining:
    """An aiosmtpd handler mixin: EHLO offers PIPELINING (RFC 2920), as Postfix, Exim and the
    big mail providers do. aiosmtpd reads its commands one line at a time, so it serves a
    client that pipelines them as it serves one that does not; it only does not say so."""

    offer_pipelining = True

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if not self.offer_pipelining:
            return responses
        return [*responses[:-1], "250-PIPELINING", responses[-1]]
