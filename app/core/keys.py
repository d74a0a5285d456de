"""Keys derived from ``OTP_HMAC_SECRET``, one per use, and the message ids made under them.

One secret is configured; each use gets its own key, ``HMAC-SHA256(secret, label)``, so a value
made for one purpose (a code, a Message-ID a recipient sees) is never a MAC another part of the
service stores or compares. No label holds ``\\x1f``, while every MAC made under the secret
itself joins its parts with one, so no such MAC's message is a label.
"""

from __future__ import annotations

import hashlib
import hmac

CODE = "otp-code/v1"
MESSAGE_ID = "message-id/v1"


def subkey(secret: bytes, label: str) -> bytes:
    return hmac.new(secret, label.encode(), hashlib.sha256).digest()


def message_key(key: bytes, *parts: object) -> str:
    """The id of one message (a request's source record and its receiver), the same each time
    that message is sent, so a resend after a crash is folded by the mail client (Message-ID)
    or dropped by the endpoint (Idempotency-Key). Keyed: it tells a recipient nothing about the
    topic, offset or volume behind it."""
    message = b"\x1f".join(str(part).encode() for part in parts)
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:32]
