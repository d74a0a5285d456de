"""The one interface every delivery channel implements, and its one error type.

An agent renders a :class:`Notification` and hands it to the channel for its ``channel`` field;
whatever the provider (SMTP, an HTTP API, a Kafka topic), failure comes back as a
:class:`DeliveryError` whose message names the provider and its status, never a credential.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Protocol

# E.164: "+", a country code that does not start with 0, 8 to 15 digits in all.
_E164 = re.compile(r"\+[1-9][0-9]{7,14}")
MAX_DEVICE_TOKEN = 4096


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
    # MAIL only: files already base64 (``app.attachments.Attachment``), and a sender other
    # than the service's own, checked against ``MAIL_SENDER_ALLOWLIST`` by the flow.
    attachments: tuple[Any, ...] = ()
    from_email: str | None = None
    from_name: str | None = None
    # The same for every send of one message (``app.core.keys.message_key``): a mail's
    # Message-ID, a webhook's Idempotency-Key, so a resend after a crash is one message twice.
    message_key: str = ""


class DeliveryError(Exception):
    """Sending failed. ``transient`` says whether trying again later may succeed.

    ``retry_after`` is the provider's own hint (HTTP ``Retry-After``) in seconds, if it gave one.
    """

    def __init__(
        self,
        provider: str,
        status: str,
        *,
        transient: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{provider} delivery failed: {status}")
        self.provider = provider
        self.status = status
        self.transient = transient
        self.retry_after = retry_after


def plain_text(notification: Notification) -> str:
    """The body as plain text: SMS and push show no HTML (``text`` is set for HTML bodies)."""
    return notification.text if notification.text is not None else notification.body


def redact(text: str, secrets: tuple[str, ...] | list[str]) -> str:
    """``text`` with every secret value replaced by ``***`` (defence in depth for errors)."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


class Channel(Protocol):
    name: str

    def check_recipient(self, recipient: str) -> str | None:
        """Return why ``recipient`` cannot be used on this channel, or None if it can."""

    async def send(self, notification: Notification) -> str | None:
        """Deliver or raise :class:`DeliveryError`; the provider's id of the message, if any
        (delivery events record it as ``providerMessageId``)."""

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


def check_phone(recipient: str) -> str | None:
    """None for an E.164 number (``+40712345678``), else why not."""
    if not _E164.fullmatch(recipient):
        return "recipient must be a phone number in E.164 format (+ and 8 to 15 digits)"
    return None


def check_device_token(recipient: str) -> str | None:
    """None for a plausible push device token: non-empty, printable, no spaces, bounded."""
    if not recipient:
        return "recipient must be a device token, got an empty string"
    if len(recipient) > MAX_DEVICE_TOKEN:
        return f"recipient must be a device token of at most {MAX_DEVICE_TOKEN} characters"
    if any(ch.isspace() or not ch.isprintable() for ch in recipient):
        return "recipient must be a device token without spaces or control characters"
    return None
