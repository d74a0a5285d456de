"""SMS or PUSH handed to an HTTP endpoint of yours (SMS_PROVIDER or PUSH_PROVIDER=webhook).

One JSON ``POST`` per notification to the configured URL, with the configured extra headers
(``SMS_WEBHOOK_HEADERS`` / ``PUSH_WEBHOOK_HEADERS``, e.g. an API key):

- SMS: ``{"to", "body", "templateName", "processInstanceId"}``
- PUSH: ``{"to", "title", "body", "templateName", "processInstanceId"}``

Any 2xx answer means delivered. Every request carries an ``Idempotency-Key`` header that stays
the same across the retries of one notification, and across its resends after a worker crash,
so the endpoint can drop duplicates (a request that timed out may still have been handled).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from app import codec
from app.channels.base import Notification, check_device_token, check_phone, plain_text
from app.channels.http import HttpClient
from app.channels.retry import Delivery, RetryPolicy

PROVIDER = "webhook"


class WebhookChannel:
    """A channel whose provider is an HTTP endpoint of the operator's choosing."""

    provider = PROVIDER

    def __init__(
        self,
        name: str,
        *,
        url: str,
        headers: tuple[tuple[str, str], ...] | None = None,
        policy: RetryPolicy | None = None,
        max_concurrency: int = 16,
    ) -> None:
        if name not in ("SMS", "PUSH"):
            raise ValueError(f"webhook channel for SMS or PUSH, not {name}")
        self.name = name
        self._url = url
        self._headers = {k: v for k, v in headers or ()}
        self._check: Callable[[str], str | None] = (
            check_phone if name == "SMS" else (check_device_token)
        )
        secrets = tuple(v for _, v in headers or ()) + (url,)
        self.http = HttpClient(PROVIDER, max_connections=max_concurrency, secrets=secrets)
        self.delivery = Delivery(PROVIDER, policy or RetryPolicy(), max_concurrency)

    def check_recipient(self, recipient: str) -> str | None:
        return self._check(recipient)

    def payload(self, notification: Notification) -> dict[str, Any]:
        body: dict[str, Any] = {"to": notification.recipient}
        if self.name == "PUSH":
            body["title"] = notification.subject
        body["body"] = plain_text(notification)
        body["templateName"] = notification.template_name
        body["processInstanceId"] = notification.process_instance_id
        return body

    async def send(self, notification: Notification) -> str | None:
        """Send; the endpoint's ``id`` if its JSON answer has one."""
        data = codec.dumps(self.payload(notification))
        headers = {
            **self._headers,
            "Content-Type": "application/json",
            "Idempotency-Key": notification.message_key or uuid.uuid4().hex,
        }

        async def attempt(timeout: float) -> str | None:
            answer = await self.http.post(self._url, data=data, headers=headers, timeout=timeout)
            if not answer.ok:
                raise self.http.error(answer)
            return answer.field("id")

        return await self.delivery.run(attempt)

    async def close(self) -> None:
        await self.http.close()
