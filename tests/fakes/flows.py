"""Fakes the flow handlers are tested with: templates, channels, an outbox and a clock."""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from app import codec
from app.channels.base import DeliveryError, Notification
from app.core import render
from app.flows import Route, Scan

T = TypeVar("T")


def scan_of(
    rows: Mapping[bytes, bytes], partition_of: Callable[[bytes], int] = lambda _: 0
) -> Scan:
    """A :class:`Scan` of ``rows`` as a worker scans its tables: a partition (``partition_of``
    a key) and a chunk at a time, in key order, looking at ``rows`` afresh for each chunk."""

    def chunk(partition: int, after: bytes | None, count: int) -> list[tuple[bytes, bytes]]:
        mine = (
            (k, v)
            for k, v in rows.items()
            if partition_of(k) == partition and (after is None or k > after)
        )
        return heapq.nsmallest(count, mine)

    return Scan(lambda: sorted({partition_of(key) for key in rows}), chunk)


@dataclass
class Entry:
    data: dict[str, Any]
    compiled: render.CompiledTemplate | None


class Templates:
    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], Entry] = {}

    def add(self, name: str, ttype: str, body: str, subject: str | None = None, **data: Any):
        compiled = render.compile_template(subject, body, html=ttype == "MAIL")
        params = data.pop("params", [{"key": "otpValue", "mandatory": True}])
        self.entries[(name, data.pop("language", "en"))] = Entry(
            {"name": name, "type": ttype, "active": True, "params": params, **data}, compiled
        )

    def resolve(self, name: str, language: str | None) -> Entry | None:
        return self.entries.get((name, language or "en")) or self.entries.get((name, "en"))


@dataclass
class FakeChannel:
    check: Any
    sent: list[Notification] = field(default_factory=list)
    fail: str | None = None
    # Recipients this provider refuses, with its status (a mailbox the server does not know).
    refused: dict[str, str] = field(default_factory=dict)

    def check_recipient(self, recipient: str) -> str | None:
        return self.check(recipient)

    async def send(self, notification: Notification) -> None:
        if self.fail:
            raise DeliveryError("fake", self.fail)
        if notification.recipient in self.refused:
            raise DeliveryError("fake", self.refused[notification.recipient])
        self.sent.append(notification)

    async def close(self) -> None:
        return None


class Outbox:
    def __init__(self) -> None:
        self.sent: list[tuple[Route, bytes | None, bytes | None, list[Any]]] = []

    async def send(self, route: Route, key: bytes | None, value: bytes | None, headers: Any):
        self.sent.append((route, key, value, headers))

    def on(self, route: Route) -> list[Any]:
        return [codec.loads(v) for r, _, v, _ in self.sent if r is route]


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def check_mail(recipient: str) -> str | None:
    return None if "@" in recipient else "recipient must be an e-mail address"


async def turns_alongside(work: Awaitable[T]) -> tuple[T, int]:
    """``work``'s result, and how many turns another task got on the loop while it ran: a scan
    that never hands the loop back lets it run once or twice at most."""
    done = asyncio.Event()
    turns = 0

    async def other_requests() -> None:
        nonlocal turns
        while not done.is_set():
            turns += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(other_requests())
    await asyncio.sleep(0)
    try:
        return await work, turns
    finally:
        done.set()
        await task
