"""The one interface every delivery channel implements, and its one error type.

An agent renders a :class:`Notification` and hands it to the channel for its ``channel`` field;
whatever the provider (SMTP, an HTTP API, a Kafka topic), failure comes back as a
:class:`DeliveryError` whose message names the provider and its status, never a credential.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Notification:
    channel: str
    recipient: str
    subject: str | None
    body: str
    text: str | None
    template_name: str
    process_instance_id: Any
    headers: dict[str, bytes] = field(default_factory=dict)


class DeliveryError(Exception):
    """Sending failed. ``transient`` says whether trying again later may succeed."""

    def __init__(self, provider: str, status: str, *, transient: bool = False) -> None:
        super().__init__(f"{provider} delivery failed: {status}")
        self.provider = provider
        self.status = status
        self.transient = transient


class Channel(Protocol):
    name: str

    def check_recipient(self, recipient: str) -> str | None:
        """Return why ``recipient`` cannot be used on this channel, or None if it can."""

    async def send(self, notification: Notification) -> None:
        """Deliver or raise :class:`DeliveryError`."""

    async def close(self) -> None:
        """Release connections; called once on shutdown."""


class UnconfiguredChannel:
    """Stands for a channel without a provider: every request gets a clear refusal."""

    def __init__(self, name: str) -> None:
        self.name = name

    def check_recipient(self, recipient: str) -> str | None:
        return f"channel {self.name} is not configured on this service"

    async def send(self, notification: Notification) -> None:
        raise DeliveryError(self.name, "channel not configured")

    async def close(self) -> None:
        return None
