"""Who a code goes to: one canonical form per receiver, its country, and its send quota.

A send limit per ``clientId`` alone is pumped by varying the ``clientId``; SMS pumping (codes
sent to premium-rate numbers for the carrier's kickback) does exactly that. So sends are also
counted per receiver, and a receiver must be counted under one name whatever way it is written:
phone numbers in E.164 (``+40 712-345-678``, ``0040712345678`` and ``+400712345678`` are one
number), mail addresses without case or ``+tag`` (``Ann+1@X.org`` reaches ``ann@x.org``).

The counted identity never leaves the service in clear: tables and topic keys hold its HMAC.
Pure: no Kafka, no Faust; the quota is a ``(row, request) -> (row, verdict)`` step.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import phonenumbers

# Requests remembered per receiver, so a redelivered request is answered as the first time.
HISTORY_SIZE = 32
ADMITTED = "admitted"


def known_region(code: str) -> bool:
    """True for an ISO 3166-1 alpha-2 code that has a telephone numbering plan."""
    return code in phonenumbers.SUPPORTED_REGIONS


class AddressError(ValueError):
    """The receiver cannot be used; the message says why, for the engine's error reply."""


def phone_number(raw: str) -> str:
    """``raw`` as E.164, or :class:`AddressError`.

    Spaces, dots, dashes and parentheses are dropped and a leading ``00`` is read as ``+``, as
    people write numbers; a number without its country code is refused (the service cannot know
    which country is meant).
    """
    text = raw.strip()
    if text.startswith("00"):
        text = "+" + text[2:]
    if not text.startswith("+"):
        raise AddressError("recipient must be a phone number in E.164 format (+ and country code)")
    digits = text[1:]
    for separator in " .-()":
        digits = digits.replace(separator, "")
    e164, _, problem = _parsed(digits)
    if problem is not None:
        raise AddressError(problem)
    return e164


def phone_region(e164: str) -> str | None:
    """The ISO 3166 region of an E.164 number (``+1 415`` is US, ``+1 416`` is CA)."""
    return _parsed(e164[1:])[1] if e164.startswith("+") else None


@functools.lru_cache(maxsize=4096)
def _parsed(digits: str) -> tuple[str, str | None, str | None]:
    """``(E.164, region, None)`` for ``+digits``, or ``("", None, why not)``.

    One libphonenumber parse per number: a generate asks for the normal form, the possibility
    and the region several times (at ingest and again where it is sent), about 30 µs each.
    """
    if not digits.isascii() or not digits.isdigit() or not 8 <= len(digits) <= 15:
        return "", None, "recipient must be a phone number in E.164 format (+ and 8 to 15 digits)"
    try:
        number = phonenumbers.parse("+" + digits, None)
    except phonenumbers.NumberParseException:
        return "", None, "recipient is not a phone number of any country"
    if not phonenumbers.is_possible_number(number):
        return "", None, "recipient is not a possible phone number for its country code"
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    return e164, phonenumbers.region_code_for_number(number), None


def country_refusal(e164: str, allowed: frozenset[str] | None) -> str | None:
    """Why SMS may not go to this number under ``SMS_ALLOWED_COUNTRIES``, or None."""
    if allowed is None:
        return None
    region = phone_region(e164)
    if region in allowed:
        return None
    return f"SMS to {region or 'this country'} is not allowed on this service"


def counted_as(channel: str, recipient: str) -> str:
    """The one name a receiver is counted under (``recipient`` already checked for its channel)."""
    if channel == "SMS":
        return recipient  # already E.164 (see ``phone_number``)
    if channel == "MAIL":
        user, _, domain = recipient.strip().rpartition("@")
        return f"{user.split('+', 1)[0].lower()}@{domain.lower()}"
    return recipient


def receiver_key(secret: bytes, channel: str, recipient: str) -> str:
    """The HMAC a receiver is stored and routed under: no address in clear in Kafka."""
    message = b"\x1f".join((b"receiver", channel.encode(), counted_as(channel, recipient).encode()))
    return hmac.new(secret, message, hashlib.sha256).hexdigest()[:32]


# --------------------------------------------------------------------------- the quota


@dataclass(frozen=True)
class ReceiverQuota:
    """A ``receivers`` row: send times still in the window, and the recent requests."""

    sends: tuple[float, ...] = ()
    history: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {"n": list(self.sends), "h": [list(item) for item in self.history]}

    @staticmethod
    def sends_of(data: dict[str, Any]) -> tuple[float, ...]:
        """A stored row's send times, without building the quota (all a sweep needs). Raises
        ValueError or TypeError on a row that is not a quota, as ``from_dict`` does."""
        return tuple(float(t) for t in data.get("n", ()))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReceiverQuota:
        return cls(
            sends=cls.sends_of(data),
            history=tuple((str(src), str(outcome)) for src, outcome in data.get("h", ())),
        )


def admit(
    quota: ReceiverQuota | None,
    source: str,
    *,
    now: float,
    max_sends: int,
    window_seconds: float,
) -> tuple[ReceiverQuota, str | None]:
    """Count one generate for a receiver: ``(quota to store, None)`` or ``(quota, refusal)``.

    A request seen before (same ``source``) gets its first verdict again and counts once. Every
    admitted request counts, whether or not it ends in a send: the receiver's quota is taken
    before the code is made, so that two workers can never both spend the last one.
    """
    quota = quota or ReceiverQuota()
    earlier = next((outcome for src, outcome in quota.history if src == source), None)
    if earlier is not None:
        return quota, None if earlier == ADMITTED else earlier
    horizon = now - window_seconds
    sends = tuple(t for t in quota.sends if t > horizon)
    if len(sends) >= max_sends:
        retry = int(min(sends) + window_seconds - now) + 1
        refusal = f"too many codes sent to this receiver: retry in {retry} s"
        return _remember(replace(quota, sends=sends), source, refusal), refusal
    return _remember(ReceiverQuota((*sends, now), quota.history), source, ADMITTED), None


def _remember(quota: ReceiverQuota, source: str, outcome: str) -> ReceiverQuota:
    return replace(quota, history=(*quota.history, (source, outcome))[-HISTORY_SIZE:])


def expired(sends: Iterable[float], now: float, window_seconds: float) -> bool:
    """Nothing left to count (every send is out of the window): the row can go."""
    return all(t <= now - window_seconds for t in sends)
