"""Fixtures: the real Kafka broker (scripts/kafka-local) and a real SMTP server (aiosmtpd).

The broker for tests listens on its own port (``TEST_KAFKA_PORT``, default 19092) with its own
data dir, so ``make test`` never collides with a developer's ``make run``. If ``make test``
already started it, the fixture reuses it; run alone (``pytest``), it starts it and stops it.
"""

from __future__ import annotations

import email
import email.policy
import os
import subprocess
import threading
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from devtools.support import ROOT, OffersPipelining, free_port
from tests.s3_fixture import s3_store  # noqa: F401  (a fixture, used by name)

KAFKA_LOCAL = ROOT / "scripts" / "kafka-local"


def _broker_env() -> dict[str, str]:
    port = os.environ.get("TEST_KAFKA_PORT", "19092")
    return {
        **os.environ,
        "KAFKA_PORT": port,
        "KAFKA_DATA_DIR": os.environ.get(
            "TEST_KAFKA_DATA_DIR", str(ROOT / ".local" / "kafka-test")
        ),
    }


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap address of a running real broker; started here only if nobody else did."""
    env = _broker_env()
    running = subprocess.run([KAFKA_LOCAL, "status"], env=env, capture_output=True).returncode == 0
    if not running:
        subprocess.run([KAFKA_LOCAL, "start"], env=env, check=True)
    yield f"127.0.0.1:{env['KAFKA_PORT']}"
    if not running:
        subprocess.run([KAFKA_LOCAL, "stop"], env=env, check=False)


class SmtpSink(OffersPipelining):
    """A real SMTP server on loopback that keeps every message it accepts, in memory."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.envelopes: list[Any] = []
        self.port = free_port()
        self._lock = threading.Lock()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        """Refuse ``reject*@`` addresses the way a real server refuses an unknown mailbox."""
        if address.startswith("reject"):
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self._lock:
            self.messages.append(message)  # type: ignore[arg-type]
            self.envelopes.append(envelope)
        return "250 OK"

    def to(self, recipient: str) -> list[EmailMessage]:
        with self._lock:
            return [m for m in self.messages if m["To"] == recipient]


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    sink.controller.start()
    yield sink
    sink.controller.stop()


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


#: The modules that take a minute or more (kills under load, a repartition, a browser), run
#: first so that ``make test``'s two processes (pytest-xdist, ``--dist loadfile``) do not end
#: with one of them still running several of these while the other is idle.
LONG_MODULES = (
    "test_scaling.py",
    "test_redelivered_code.py",
    "test_repartition.py",
    "test_notify_chaos.py",
    "test_console.py",
    "test_openapi_contract.py",
    "test_make_run.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONG_MODULES.index(name) if name in LONG_MODULES else len(LONG_MODULES)

    items.sort(key=rank)  # stable: the order within a module, and of the rest, stays
