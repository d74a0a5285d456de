"""OTP policy: make a code, keep only its HMAC, check a guess, expire, count attempts and sends.

Pure functions over a small immutable record, with the clock passed in, so every rule is
tested directly without Kafka and the agent that applies them stays a thin shell. The record is
what the ``otps`` table (and so its changelog topic) holds: it never contains the code itself,
only ``HMAC-SHA256(OTP_HMAC_SECRET, identifier | channel | code)``. Binding the identifier and
channel into the MAC means a stolen record cannot be replayed for another user or channel, and
a 6-digit code cannot be recovered from the changelog without the key.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field, replace
from typing import Any

DIGITS = "0123456789"
SENT = "sent"
REFUSED = "refused:"
# Requests remembered per identifier: more than a send window's generates plus a code's
# attempts, so any redelivery that can still arrive is recognised.
HISTORY_SIZE = 24


@dataclass(frozen=True)
class OtpPolicy:
    """The knobs of the policy; filled from Settings by the app, defaults follow NIST 800-63B."""

    length: int = 6
    alphabet: str = DIGITS
    ttl_seconds: float = 600
    max_attempts: int = 5
    max_sends: int = 5
    send_window_seconds: float = 600

    def __post_init__(self) -> None:
        if not 4 <= self.length <= 10:
            raise ValueError("OTP length must be between 4 and 10")
        if len(set(self.alphabet)) < 10:
            raise ValueError("OTP alphabet needs at least 10 distinct characters")
        if len(self.alphabet) > 256:
            raise ValueError("OTP alphabet has at most 256 characters")


class Status(enum.StrEnum):
    PENDING = "pending"
    CONSUMED = "consumed"
    LOCKED = "locked"
    CANCELED = "canceled"


class Outcome(enum.StrEnum):
    """Result of a validation; each failure has its own message for the engine."""

    VALID = "valid"
    INVALID = "invalid"
    LOCKED = "locked"
    EXPIRED = "expired"
    CONSUMED = "consumed"
    UNKNOWN = "unknown"
    MISMATCH = "transaction_mismatch"
    CANCELED = "canceled"

    @property
    def error(self) -> str | None:
        return _OUTCOME_ERRORS[self]


_OUTCOMES = frozenset(o.value for o in Outcome)
_OUTCOME_ERRORS: dict[Outcome, str | None] = {
    Outcome.VALID: None,
    Outcome.INVALID: "invalid code",
    Outcome.LOCKED: "too many failed attempts: the code is locked, generate a new one",
    Outcome.EXPIRED: "code expired",
    Outcome.CONSUMED: "code already used",
    Outcome.UNKNOWN: "no code was generated for this client",
    Outcome.MISMATCH: "code does not match the transaction",
    Outcome.CANCELED: "code canceled",
}

#: ``(amount, payee)`` in canonical form (``app.records``): what a payment code is bound to.
Transaction = tuple[str, str]


class RateLimited(Exception):
    """Too many codes were sent to one identifier inside the send window."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"too many codes requested: retry in {int(retry_after) + 1} s")
        self.retry_after = retry_after


@dataclass(frozen=True)
class OtpRecord:
    """What is stored per identifier. ``sends`` holds issue times still inside the window."""

    digest: str
    channel: str
    process_instance_id: Any
    issued_at: float
    expires_at: float
    attempts: int = 0
    status: Status = Status.PENDING
    sends: tuple[float, ...] = field(default_factory=tuple)
    # Idempotency under at-least-once delivery: the last requests (topic/partition/offset of
    # the engine's record) that changed this row, with their outcome, so a redelivered request
    # is answered as the first time instead of being applied twice. Redeliveries can arrive
    # after later requests for the same identifier, hence a short history, not just the last.
    history: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    # HMAC of the transaction a payment code was issued for (PSD2 dynamic linking), or "".
    transaction: str = ""
    # Where the code went, so the validate's and the expiry's delivery events can name it.
    receiver: str = ""
    # What each recent request's reply said besides its outcome ("expiresAt", tries left), by
    # source, so a redelivery answers the same. Apart from ``history`` (whose entries keep
    # their old form): a worker of the previous release reads these rows unchanged.
    facts: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """Short keys: this is written to RocksDB and the changelog once per request."""
        return {
            "d": self.digest,
            "c": self.channel,
            "p": self.process_instance_id,
            "i": self.issued_at,
            "e": self.expires_at,
            "a": self.attempts,
            "s": self.status.value,
            "n": list(self.sends),
            "h": [list(item) for item in self.history],
            **({"t": self.transaction} if self.transaction else {}),
            **({"r": self.receiver} if self.receiver else {}),
            **({"f": [list(item) for item in self.facts]} if self.facts else {}),
        }

    @staticmethod
    def expiry(data: dict[str, Any]) -> float:
        """A stored row's expiry, without building the record (all a sweep needs of a row)."""
        return float(data["e"])

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OtpRecord:
        return cls(
            digest=data["d"],
            channel=data["c"],
            process_instance_id=data.get("p"),
            issued_at=float(data["i"]),
            expires_at=float(data["e"]),
            attempts=int(data.get("a", 0)),
            status=Status(data.get("s", Status.PENDING.value)),
            sends=tuple(float(t) for t in data.get("n", ())),
            history=tuple((str(src), str(outcome)) for src, outcome in data.get("h", ())),
            transaction=str(data.get("t", "")),
            receiver=str(data.get("r", "")),
            facts=tuple((str(src), str(facts)) for src, facts in data.get("f", ())),
        )


def new_code(policy: OtpPolicy) -> str:
    """A fresh code from the OS CSPRNG (``secrets``), uniform over the alphabet: for a request
    that has no source record to derive one from."""
    alphabet = policy.alphabet
    return "".join(secrets.choice(alphabet) for _ in range(policy.length))


def derive_code(key: bytes, policy: OtpPolicy, request: tuple[object, ...]) -> str:
    """The code of one request, the same each time that request is handled (``key`` is
    ``keys.subkey(secret, keys.CODE)``).

    A worker that dies after the provider accepted a mail and before the row recording it
    reached Kafka handles the request again and sends again; deriving the code from the request
    (its source record's topic, partition, offset and timestamp, and the identifier) makes that
    second message carry the code of the first, so whichever the user opens validates. Without
    the key the code is as unpredictable as a random one (HMAC-SHA256 is a PRF); with the key an
    attacker could already test every code against the row's digest, so nothing is lost.

    Bytes of ``HMAC(key, counter | request)`` are mapped to the alphabet by rejection sampling
    (a byte at or above the largest multiple of the alphabet's size is skipped), which keeps
    every character uniform: a plain ``byte % size`` would favour the first ``256 % size``.
    """
    alphabet, size = policy.alphabet, len(policy.alphabet)
    limit = 256 - 256 % size
    message = b"\x1f".join(str(part).encode() for part in request)
    out: list[str] = []
    counter = 0
    while len(out) < policy.length:
        block = hmac.new(key, counter.to_bytes(4, "big") + message, hashlib.sha256).digest()
        out.extend(alphabet[byte % size] for byte in block if byte < limit)
        counter += 1
    return "".join(out[: policy.length])


def digest(
    secret: bytes, identifier: str, channel: str, code: str, transaction: Transaction | None = None
) -> str:
    """HMAC-SHA256 of the code bound to its identifier, channel and transaction, if any (hex)."""
    parts = [identifier.encode(), channel.encode(), code.encode()]
    if transaction is not None:
        parts.extend(part.encode() for part in transaction)
    return hmac.new(secret, b"\x1f".join(parts), hashlib.sha256).hexdigest()


def transaction_digest(secret: bytes, identifier: str, transaction: Transaction | None) -> str:
    """What a record keeps of its transaction: enough to tell "another transaction" apart from
    "wrong code", nothing that shows the amount or payee (the changelog is readable)."""
    if transaction is None:
        return ""
    message = b"\x1f".join(
        (b"transaction", identifier.encode(), *(p.encode() for p in transaction))
    )
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def recent_sends(record: OtpRecord | None, policy: OtpPolicy, now: float) -> tuple[float, ...]:
    if record is None:
        return ()
    horizon = now - policy.send_window_seconds
    return tuple(t for t in record.sends if t > horizon)


def check_send_allowed(record: OtpRecord | None, policy: OtpPolicy, now: float) -> None:
    """Raise :class:`RateLimited` when the identifier used up its sends in the window."""
    sends = recent_sends(record, policy, now)
    if len(sends) >= policy.max_sends:
        raise RateLimited(retry_after=min(sends) + policy.send_window_seconds - now)


def issue(
    policy: OtpPolicy,
    secret: bytes,
    previous: OtpRecord | None,
    *,
    identifier: str,
    channel: str,
    process_instance_id: Any,
    now: float,
    code: str | None = None,
    source: str | None = None,
    transaction: Transaction | None = None,
    receiver: str = "",
) -> tuple[str, OtpRecord]:
    """Make a new code that replaces any previous one; the send counter carries over.

    A payment's code is bound to its ``transaction`` (amount, payee): it validates only for
    that same transaction (PSD2's dynamic linking). Raises :class:`RateLimited` before a code
    is made, so a refused request changes nothing.
    """
    check_send_allowed(previous, policy, now)
    code = new_code(policy) if code is None else code
    record = OtpRecord(
        digest=digest(secret, identifier, channel, code, transaction),
        transaction=transaction_digest(secret, identifier, transaction),
        channel=channel,
        process_instance_id=process_instance_id,
        issued_at=now,
        expires_at=now + policy.ttl_seconds,
        sends=(*recent_sends(previous, policy, now), now),
        history=_remember(previous, source, SENT),
        facts=_with_facts(previous, source, repr(now + policy.ttl_seconds)),
        receiver=receiver,
    )
    return code, record


def _with_facts(
    record: OtpRecord | None, source: str | None, facts: str
) -> tuple[tuple[str, str], ...]:
    """``record``'s facts with this request's added (same bound as the history)."""
    kept = record.facts if record is not None else ()
    if source is None:
        return kept
    return (*kept, (source, facts))[-HISTORY_SIZE:]


def _facts(record: OtpRecord | None, source: str | None) -> str | None:
    if record is None or source is None:
        return None
    return next((facts for src, facts in record.facts if src == source), None)


def sent_expiry(record: OtpRecord | None, source: str | None) -> float | None:
    """The expiry the generate from ``source`` replied with, so a redelivery answers the same
    ``expiresAt`` even after a newer code (None for rows written before facts were kept)."""
    try:
        return float(_facts(record, source) or "")
    except ValueError:
        return None


@dataclass(frozen=True)
class ValidateFacts:
    """What a validate reply reports besides the outcome, as of that validate."""

    attempts_remaining: int | None
    expires_at: float | None


def _validate_facts(record: OtpRecord | None, policy: OtpPolicy, now: float) -> str:
    """``remaining#expiry`` of a validate's reply: no tries are left once the code is not
    pending, and the expiry is shown only while the code lives."""
    if record is None or not record.digest:
        return "#"
    live = record.status is Status.PENDING and now < record.expires_at
    remaining = max(0, policy.max_attempts - record.attempts) if live else 0
    return f"{remaining}#{repr(record.expires_at) if live else ''}"


def validate_facts(record: OtpRecord | None, source: str | None) -> ValidateFacts:
    """The facts recorded for the validate from ``source``."""
    remaining, _, expiry = (_facts(record, source) or "#").partition("#")
    try:
        return ValidateFacts(
            int(remaining) if remaining else None, float(expiry) if expiry else None
        )
    except ValueError:
        return ValidateFacts(None, None)


def replayed(record: OtpRecord | None, source: str | None) -> str | None:
    """The outcome recorded for this request if it was handled before (a redelivery)."""
    if record is None or source is None:
        return None
    return next((outcome for src, outcome in record.history if src == source), None)


def remember(record: OtpRecord | None, source: str, outcome: str, now: float) -> OtpRecord:
    """``record`` with this request's outcome added to its history.

    Refusals are remembered too, so a redelivered refused request gets the same refusal; an
    identifier without a row gets one that holds only history (no code), swept like any other.
    """
    if record is None:
        record = OtpRecord(
            digest="", channel="", process_instance_id=None, issued_at=now, expires_at=now
        )
    return replace(record, history=_remember(record, source, outcome))


def refused(outcome: str | None) -> str | None:
    """The error of a remembered refusal, or None if ``outcome`` is not one."""
    return outcome[len(REFUSED) :] if outcome and outcome.startswith(REFUSED) else None


def _remember(
    record: OtpRecord | None, source: str | None, outcome: str
) -> tuple[tuple[str, str], ...]:
    history = record.history if record is not None else ()
    if source is None:
        return history
    return (*history, (source, outcome))[-HISTORY_SIZE:]


def verify(
    policy: OtpPolicy,
    secret: bytes,
    record: OtpRecord | None,
    *,
    identifier: str,
    channel: str,
    code: str,
    now: float,
    source: str | None = None,
    transaction: Transaction | None = None,
    guess: str | None = None,
) -> tuple[Outcome, OtpRecord | None]:
    """Check a guess; return the outcome and the record to store (unchanged when nothing moved).

    The comparison is constant-time. A right code is consumed (single use); a wrong one costs
    an attempt, and the ``max_attempts``-th wrong one locks the code until a new one is issued.
    A guess for another channel than the code was sent on is simply wrong: the MAC binds both.
    A redelivered request (a ``source`` already in the record's history) gets the outcome it got
    the first time and changes nothing, so a ``true`` never turns into ``false`` and a wrong
    guess is never counted twice.

    ``guess``, when given, is the code's :func:`digest` made where the code was typed, so that
    the code itself need not travel; ``code`` is then ignored.
    """
    earlier = replayed(record, source)
    if earlier in _OUTCOMES:
        return Outcome(earlier), record
    if guess is None:
        guess = digest(secret, identifier, channel, code, transaction)
    elif not (isinstance(guess, str) and guess.isascii()):
        guess = ""  # a command not of ours: a wrong guess, not a crash in compare_digest
    outcome, updated = _verify(policy, secret, record, identifier, guess, now, transaction)
    if source is not None:
        updated = remember(updated, source, outcome.value, now)
        facts = _with_facts(updated, source, _validate_facts(updated, policy, now))
        updated = replace(updated, facts=facts)
    return outcome, updated


def _verify(
    policy: OtpPolicy,
    secret: bytes,
    record: OtpRecord | None,
    identifier: str,
    guess: str,
    now: float,
    transaction: Transaction | None,
) -> tuple[Outcome, OtpRecord | None]:
    if record is None or not record.digest:
        return Outcome.UNKNOWN, record
    if record.status is Status.CONSUMED:
        return Outcome.CONSUMED, record
    if record.status is Status.LOCKED:
        return Outcome.LOCKED, record
    if record.status is Status.CANCELED:
        return Outcome.CANCELED, record
    if now >= record.expires_at:
        return Outcome.EXPIRED, record
    # Another transaction is a failed attempt too: it must not become a way to probe codes.
    wrong = Outcome.INVALID
    if not hmac.compare_digest(
        transaction_digest(secret, identifier, transaction), record.transaction
    ):
        wrong = Outcome.MISMATCH
    elif hmac.compare_digest(guess, record.digest):
        return Outcome.VALID, replace(record, status=Status.CONSUMED)
    attempts = record.attempts + 1
    if attempts >= policy.max_attempts:
        return Outcome.LOCKED, replace(record, attempts=attempts, status=Status.LOCKED)
    return wrong, replace(record, attempts=attempts)


def deletable(expires_at: float, policy: OtpPolicy, now: float) -> bool:
    """True once the code has been expired for a whole send window.

    Until then the row still answers "code expired" (not "unknown") and still counts sends
    for the limit (every send is older than the expiry); keeping it longer would grow the
    table without bound.
    """
    return now >= expires_at + policy.send_window_seconds


def cancel(record: OtpRecord | None, now: float) -> OtpRecord | None:
    """The record with its code canceled, or None if there is no live code to cancel."""
    if record is None or not record.digest or describe_status(record, now) != "pending":
        return None
    return replace(record, status=Status.CANCELED)


def describe_status(record: OtpRecord, now: float) -> str:
    """The code's status as Twilio Verify names them: pending, approved, expired,
    max_attempts_reached, canceled."""
    if record.status is Status.CONSUMED:
        return "approved"
    if record.status is Status.LOCKED:
        return "max_attempts_reached"
    if record.status is Status.CANCELED:
        return "canceled"
    return "pending" if now < record.expires_at else "expired"


def describe(record: OtpRecord, policy: OtpPolicy, now: float) -> dict[str, Any]:
    """What an operator may see of an identifier's current code: never the code or its HMAC,
    and the receiver only masked (by the caller, which owns the masking rule)."""
    return {
        "status": describe_status(record, now),
        "channel": record.channel,
        "processInstanceId": record.process_instance_id,
        "issuedAt": record.issued_at,
        "expiresAt": record.expires_at,
        "attempts": record.attempts,
        "attemptsRemaining": max(0, policy.max_attempts - record.attempts),
        "sendsInWindow": len(recent_sends(record, policy, now)),
        "maxSends": policy.max_sends,
    }
