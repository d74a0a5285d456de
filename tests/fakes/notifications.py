"""Notifications as the agent builds them, and retry policies short enough for tests."""

from __future__ import annotations

from typing import Any

from app.channels.base import Notification
from app.channels.retry import RetryPolicy


def fast_policy(timeout: float = 3.0, **overrides: Any) -> RetryPolicy:
    """The production shape with small numbers: a test waits tenths of a second, not seconds."""
    return RetryPolicy(timeout=timeout, base_delay=0.05, max_delay=0.2, **overrides)


def notification(
    channel: str = "SMS",
    recipient: str = "+40712345678",
    *,
    body: str = "OTP 123456",
    subject: str | None = None,
    text: str | None = None,
    headers: dict[str, bytes] | None = None,
    process_instance_id: Any = 12345,
    message_key: str = "",
) -> Notification:
    return Notification(
        channel=channel,
        recipient=recipient,
        subject=subject,
        body=body,
        text=text,
        template_name=f"otp{channel.title()}",
        process_instance_id=process_instance_id,
        headers=headers or {},
        message_key=message_key,
    )
