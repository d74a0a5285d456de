"""SMS through Twilio's Messages API (``SMS_PROVIDER=twilio``).

``POST {TWILIO_BASE_URL}/2010-04-01/Accounts/{AccountSid}/Messages.json``, form-encoded
``To``, ``Body`` and ``MessagingServiceSid`` (when set) or ``From``, with HTTP basic auth
``AccountSid:AuthToken``. Twilio answers ``201`` with the created message; errors carry a JSON
body ``{code, message, more_info, status}`` whose code and message end up in the reply's
``error`` (``twilio delivery failed: HTTP 400 (21211 Invalid 'To' Phone Number)``).
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote

from app.channels.base import Notification, check_phone, plain_text
from app.channels.http import HttpClient, describe
from app.channels.retry import Delivery, RetryPolicy

PROVIDER = "twilio"
# The route Twilio's status callbacks come to (web/callbacks.py), under PUBLIC_BASE_URL.
TWILIO_CALLBACK_PATH = "/api/callbacks/twilio"


def _twilio_detail(body: Any) -> str | None:
    """Twilio's error code (``21211``), which its error dictionary explains; not its message,
    which can quote the SMS back (``Message filtered: 'Your code is 482913'``)."""
    if not isinstance(body, dict):
        return None
    code = body.get("code")
    return str(code) if type(code) is int or (isinstance(code, str) and code.isdigit()) else None


class TwilioChannel:
    """The SMS channel over Twilio. ``send`` is safe to call concurrently."""

    name = "SMS"
    provider = PROVIDER

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        from_number: str | None = None,
        messaging_service_sid: str | None = None,
        base_url: str,
        policy: RetryPolicy | None = None,
        max_concurrency: int = 16,
        status_callback: str | None = None,
    ) -> None:
        if not (from_number or messaging_service_sid):
            raise ValueError("TwilioChannel needs from_number or messaging_service_sid")
        self._url = (
            f"{base_url.rstrip('/')}/2010-04-01/Accounts/{quote(account_sid, safe='')}"
            "/Messages.json"
        )
        credentials = base64.b64encode(f"{account_sid}:{auth_token}".encode()).decode()
        self._headers = {"Authorization": f"Basic {credentials}"}
        # A messaging service picks the sender from its own pool, so it wins when both are set.
        self._sender = (
            {"MessagingServiceSid": messaging_service_sid}
            if messaging_service_sid
            else {"From": from_number or ""}
        )
        self.http = HttpClient(
            PROVIDER, max_connections=max_concurrency, secrets=(auth_token, credentials)
        )
        self.delivery = Delivery(PROVIDER, policy or RetryPolicy(), max_concurrency)
        # Where Twilio reports each message's status (``PUBLIC_BASE_URL``/api/callbacks/twilio).
        self._status_callback = status_callback
        self.reports_status = bool(status_callback)

    def check_recipient(self, recipient: str) -> str | None:
        return check_phone(recipient)

    async def send(self, notification: Notification) -> str | None:
        """Send; the message's ``sid``, which Twilio's status callbacks name."""
        form = {"To": notification.recipient, **self._sender, "Body": plain_text(notification)}
        if self._status_callback:
            form["StatusCallback"] = self._status_callback

        async def attempt(timeout: float) -> str | None:
            answer = await self.http.post(
                self._url, data=form, headers=self._headers, timeout=timeout
            )
            if not answer.ok:
                raise self.http.error(answer, describe(answer, _twilio_detail))
            return answer.field("sid")

        return await self.delivery.run(attempt)

    async def close(self) -> None:
        await self.http.close()
