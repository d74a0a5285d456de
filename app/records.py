"""Wire records of the engine contract: parse requests, shape replies.

Parsing is strict about what the service needs and lenient about what it ignores, because the
engine is not ours: unknown fields are template parameters, never an error. Every refusal is a
:class:`RequestError` naming the field, and carries the ``processInstanceId`` when one could be
read, so the agent can answer the engine instead of dead-lettering the message.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from email.utils import encode_rfc2231
from typing import Any

from app import codec
from app.core.otp import Transaction
from app.core.receivers import AddressError, phone_number
from app.core.templates import LANGUAGE_RE

CHANNELS = ("MAIL", "SMS", "PUSH")
RESERVED_PARAMS = frozenset({"otpValue"})
_ENVELOPE = frozenset(
    {
        "processInstanceId",
        "templateName",
        "channel",
        "recipient",
        "language",
        "data",
        "contentParams",
    }
)
# Template parameters nested deeper than this are refused: every encoder on the way (orjson
# stops at 254 levels) must be able to write the request again.
MAX_PARAM_DEPTH = 32
# What a request can be read at all for its processInstanceId when it is over the size limit.
MAX_SALVAGE_BYTES = 1_048_576
_AMOUNT_RE = re.compile(r"[0-9]{1,15}(\.[0-9]{1,6})?")
MAX_PAYEE = 140


class RequestError(ValueError):
    """A request the service cannot act on. ``field`` is the JSON field at fault."""

    def __init__(self, field: str | None, reason: str, process_instance_id: Any = None) -> None:
        self.field = field
        self.reason = reason
        self.process_instance_id = process_instance_id
        super().__init__(f"{field}: {reason}" if field else reason)


@dataclass(frozen=True)
class GenerateRequest:
    process_instance_id: Any
    template_name: str
    channel: str
    recipient: str
    language: str | None
    client_id: Any
    params: dict[str, Any]
    transaction: Transaction | None = None

    @property
    def key(self) -> str:
        return str(self.client_id)


@dataclass(frozen=True)
class ValidateRequest:
    process_instance_id: Any
    client_id: Any
    channel: str
    otp: str
    transaction: Transaction | None = None
    # What travels on otp-commands instead of the code: its digest (``app.core.otp.digest``),
    # which only the HMAC key holder can check a guess against. ``otp`` is then empty.
    otp_digest: str | None = None

    @property
    def key(self) -> str:
        return str(self.client_id)


def header_list(headers: Any) -> list[tuple[str, bytes | None]]:
    """A record's headers as a list (Faust gives a dict or pairs; a dict merges repeated names)."""
    if not headers:
        return []
    items = headers.items() if isinstance(headers, dict) else headers
    return [(str(name), value) for name, value in items]


# Each header is framed by the lengths of its name and value, varints of a byte or more each.
HEADER_FRAMING_BYTES = 2


def record_size(key: bytes | None, value: bytes | None, headers: Any) -> int:
    """Bytes of a Kafka record's key, value and headers: what a producer's size limit counts.

    The headers' framing counts too: 400,000 empty headers are 800 KB on the wire, and a size
    without it let such a request through, to be copied into every hop and its reply.
    """
    pairs = header_list(headers) if isinstance(headers, dict) else headers or ()
    # Joined, not summed header by header: a record can hold half a million headers, and a
    # refused one is measured three times (ingest, reply, dead letter): 35 ms a pass, not 160.
    names = "".join(str(name) for name, _ in pairs).encode("utf-8", "surrogateescape")
    values = sum(len(v) for _, v in pairs if v)
    return (
        len(key or b"")
        + len(value or b"")
        + len(names)
        + values
        + (HEADER_FRAMING_BYTES * len(pairs))
    )


def oversized(raw: bytes | None, size: int, max_bytes: int) -> RequestError:
    """The refusal of a request over ``MAX_REQUEST_BYTES``, with its processInstanceId if it
    can be read: the engine is waiting for an answer, even one that says "too large"."""
    pid = None
    if raw is not None and len(raw) <= MAX_SALVAGE_BYTES:
        try:
            data = codec.loads(raw)
            pid = _process_instance_id(data) if isinstance(data, dict) else None
        except (codec.JSONDecodeError, RequestError):
            pid = None
    return RequestError(None, f"message of {size} bytes is over the {max_bytes}-byte limit", pid)


def _decode(raw: bytes | None, max_bytes: int) -> dict[str, Any]:
    if raw is None:
        raise RequestError(None, "empty message")
    if len(raw) > max_bytes:
        raise oversized(raw, len(raw), max_bytes)
    try:
        data = codec.loads(raw)
    except codec.JSONDecodeError:
        raise RequestError(None, "message is not valid JSON") from None
    if not isinstance(data, dict):
        raise RequestError(None, "message must be a JSON object")
    return data


def _process_instance_id(data: dict[str, Any]) -> Any:
    pid = data.get("processInstanceId")
    if isinstance(pid, bool) or not isinstance(pid, int | str) or pid == "":
        raise RequestError("processInstanceId", "is required (a number or a non-empty string)")
    if isinstance(pid, str) and len(pid) > 200:
        raise RequestError("processInstanceId", "is longer than 200 characters")
    return pid


def identifier(value: Any, field: str, pid: Any) -> Any:
    """An identifier that rate limits and codes are counted under: one spelling per person.

    ``" 42"``, ``"42\t"`` and ``"\u00a042"`` would each get a fresh send quota, so whitespace
    around it and invisible characters in it are refused, not stripped (stripping would make
    the engine's and the service's idea of the identifier differ).
    """
    if isinstance(value, bool) or not isinstance(value, int | str) or value == "":
        raise RequestError(field, "is required (a number or a non-empty string)", pid)
    if len(str(value)) > 200:
        raise RequestError(field, "is longer than 200 characters", pid)
    if isinstance(value, str):
        if value != value.strip():
            raise RequestError(field, "has leading or trailing whitespace", pid)
        if any(
            unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp") for c in value
        ):
            raise RequestError(field, "contains control or invisible characters", pid)
    return value


def _client_id(data: dict[str, Any], pid: Any) -> Any:
    """``clientId`` from the top level, ``contentParams`` or ``data``; all given must agree."""
    given = [
        (where, source["clientId"])
        for where, source in (
            ("clientId", data),
            ("contentParams.clientId", data.get("contentParams")),
            ("data.clientId", data.get("data")),
        )
        if isinstance(source, dict) and source.get("clientId") is not None
    ]
    if not given:
        return identifier(None, "clientId", pid)
    for where, value in given:
        identifier(value, where, pid)
    first_field, first = given[0]
    for where, value in given[1:]:
        if str(value) != str(first):
            raise RequestError(where, f"differs from {first_field}: give the clientId once", pid)
    return given[-1][1]


def _transaction(data: dict[str, Any], pid: Any) -> Transaction | None:
    """``(amount, payee)`` of a payment, canonical, so the HMAC is the same for equal values:
    ``100``, ``"100.0"`` and ``100.00`` are one amount."""
    amount, payee = data.get("amount"), data.get("payee")
    if amount is None and payee is None:
        return None
    if amount is None or payee is None:
        missing = "amount" if amount is None else "payee"
        raise RequestError(missing, "is required when amount or payee is given", pid)
    if isinstance(amount, bool) or not isinstance(amount, int | float | str):
        raise RequestError("amount", "must be a number or a decimal string", pid)
    text = repr(amount) if isinstance(amount, float) else str(amount).strip()
    if not _AMOUNT_RE.fullmatch(text):
        raise RequestError("amount", "must be a positive decimal such as 100 or 99.95", pid)
    try:
        canonical = format(Decimal(text).normalize(), "f")
    except InvalidOperation:
        raise RequestError(
            "amount", "must be a positive decimal such as 100 or 99.95", pid
        ) from None
    if not isinstance(payee, str) or not payee.strip():
        raise RequestError("payee", "must be a non-empty string", pid)
    payee = unicodedata.normalize("NFC", payee.strip())
    if len(payee) > MAX_PAYEE:
        raise RequestError("payee", f"is longer than {MAX_PAYEE} characters", pid)
    if any(unicodedata.category(c).startswith("C") for c in payee):
        raise RequestError("payee", "contains control or invisible characters", pid)
    return canonical, payee


def _recipient(data: dict[str, Any], channel: str, pid: Any) -> str:
    """An SMS number in E.164 however it was written; one that is not a number is kept as
    sent, for the channel to refuse (and the refusal to be remembered) like any bad address."""
    recipient = _string(data, "recipient", pid, max_len=4096)
    if channel != "SMS":
        return recipient
    try:
        return phone_number(recipient)
    except AddressError:
        return recipient


def _string(data: dict[str, Any], field: str, pid: Any, *, max_len: int = 320) -> str:
    value = data.get(field)
    if not isinstance(value, str) or not value.strip():
        raise RequestError(field, "is required (a non-empty string)", pid)
    if len(value) > max_len:
        raise RequestError(field, f"is longer than {max_len} characters", pid)
    return value.strip()


def _channel(data: dict[str, Any], pid: Any) -> str:
    value = data.get("channel")
    if not isinstance(value, str) or value.upper() not in CHANNELS:
        raise RequestError("channel", f"must be one of {', '.join(CHANNELS)}", pid)
    return value.upper()


def _object(data: dict[str, Any], field: str, pid: Any) -> dict[str, Any]:
    value = data.get(field)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RequestError(field, "must be a JSON object", pid)
    return value


def parse_generate(raw: bytes | None, max_bytes: int) -> GenerateRequest:
    """Parse a generate request; template parameters merge top-level < contentParams < data."""
    data = _decode(raw, max_bytes)
    pid = _process_instance_id(data)
    params = {k: v for k, v in data.items() if k not in _ENVELOPE}
    params.update(_object(data, "contentParams", pid))
    params.update(_object(data, "data", pid))
    if codec.depth(params) > MAX_PARAM_DEPTH:
        raise RequestError("data", f"is nested more than {MAX_PARAM_DEPTH} levels deep", pid)
    if RESERVED_PARAMS & params.keys():
        # The service chooses the code; a request must never be able to choose its own.
        raise RequestError("otpValue", "is reserved: the service generates the code", pid)
    language = data.get("language")
    if language is not None and (
        not isinstance(language, str) or not LANGUAGE_RE.fullmatch(language)
    ):
        raise RequestError("language", "must be a language tag such as 'en' or 'pt-BR'", pid)
    channel = _channel(data, pid)
    client_id = _client_id(data, pid)
    transaction = _transaction(params, pid)
    if transaction is not None:
        params.update(amount=transaction[0], payee=transaction[1])
    return GenerateRequest(
        process_instance_id=pid,
        template_name=_string(data, "templateName", pid, max_len=100),
        channel=channel,
        recipient=_recipient(data, channel, pid),
        language=language,
        client_id=client_id,
        params={**params, "clientId": client_id},
        transaction=transaction,
    )


def parse_validate(raw: bytes | None, max_bytes: int) -> ValidateRequest:
    data = _decode(raw, max_bytes)
    pid = _process_instance_id(data)
    otp = data.get("otp")
    if isinstance(otp, int) and not isinstance(otp, bool):
        otp = str(otp)
    if not isinstance(otp, str) or not otp:
        raise RequestError("otp", "is required (a string)", pid)
    if len(otp) > 64:
        raise RequestError("otp", "is longer than 64 characters", pid)
    return ValidateRequest(
        process_instance_id=pid,
        client_id=identifier(data.get("clientId"), "clientId", pid),
        channel=_channel(data, pid),
        otp=otp.strip(),
        transaction=_transaction(data, pid),
    )


def salvage_reply_fields(raw: bytes | None) -> dict[str, Any]:
    """Best effort: the fields an error reply echoes, from a message that failed to parse."""
    try:
        data = codec.loads(raw) if raw else None
    except codec.JSONDecodeError:
        return {}
    if not isinstance(data, dict):
        return {}
    out: dict[str, Any] = {}
    client = data.get("clientId")
    if client is None and isinstance(data.get("data"), dict):
        client = data["data"].get("clientId")
    if isinstance(client, int | str) and not isinstance(client, bool):
        out["clientId"] = client
    channel = data.get("channel")
    if isinstance(channel, str) and channel.upper() in CHANNELS:
        out["channel"] = channel.upper()
    return out


def iso_utc(timestamp: float | None) -> str | None:
    """ISO-8601 in UTC with milliseconds (``2026-12-01T10:15:02.113Z``), as replies and events
    write every time."""
    if timestamp is None:
        return None
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def generate_reply(
    process_instance_id: Any,
    client_id: Any,
    channel: str | None,
    sent: bool,
    error: str | None,
    expires_at: float | None = None,
) -> dict[str, Any]:
    """The seed's reply shape, field for field, and when the code expires (null if none)."""
    return {
        "processInstanceId": process_instance_id,
        "clientId": client_id,
        "channel": channel,
        "otpSent": sent,
        "error": error,
        "expiresAt": iso_utc(expires_at),
    }


def validate_reply(
    process_instance_id: Any,
    client_id: Any,
    channel: str | None,
    valid: bool,
    error: str | None,
    attempts_remaining: int | None = None,
    expires_at: float | None = None,
) -> dict[str, Any]:
    """FlowX's fields, then the wrong tries left and the expiry while the code still lives."""
    return {
        "processInstanceId": process_instance_id,
        "clientId": client_id,
        "channel": channel,
        "otpValid": valid,
        "error": error,
        "attemptsRemaining": attempts_remaining,
        "expiresAt": iso_utc(expires_at),
    }


# -- send notification ------------------------------------------------------------------------
MAX_ATTACHMENTS = 20
MAX_ENCODED_FILENAME = 900
_FILENAME_FORBIDDEN = frozenset('/\\"\r\n\0')


@dataclass(frozen=True)
class NotifyRequest:
    """A send-notification request. ``channel`` None: the template's own type decides."""

    process_instance_id: Any
    identifier: Any
    template_name: str
    channel: str | None
    language: str | None
    receivers: list[str]
    params: dict[str, Any]
    sender_email: str | None = None
    sender_name: str | None = None
    attachments: list[dict[str, str]] | None = None

    @property
    def reply_key(self) -> str:
        """Replies are keyed by processInstanceId; a request without one by its identifier."""
        pid = self.process_instance_id
        return str(pid if pid is not None else self.identifier)


def header_process_instance_id(headers: Any) -> Any:
    """The ``processInstanceId`` Kafka header FlowX's message send task sets, as text."""
    for name, value in header_list(headers):
        if name == "processInstanceId" and value:
            try:
                text = value.decode("utf-8").strip().strip('"')
            except UnicodeDecodeError:
                return None
            return text if text and len(text) <= 200 else None
    return None


def _notify_correlation(data: dict[str, Any], header_pid: Any) -> tuple[Any, Any]:
    """(processInstanceId, identifier): what a reply can be addressed by, body over header."""
    pid = data.get("processInstanceId")
    pid = _process_instance_id(data) if pid is not None else header_pid
    identifier = data.get("identifier")
    if identifier is not None and (
        isinstance(identifier, bool)
        or not isinstance(identifier, int | str)
        or len(str(identifier)) > 200
    ):
        raise RequestError(
            "identifier", "must be a string or a number of at most 200 characters", pid
        )
    return pid, identifier


def _receivers(data: dict[str, Any], pid: Any, max_receivers: int) -> list[str]:
    value = data.get("receivers")
    if not isinstance(value, list) or not value:
        raise RequestError("receivers", "is required (a non-empty list of addresses)", pid)
    if len(value) > max_receivers:
        raise RequestError("receivers", f"has more than {max_receivers} entries", pid)
    out: list[str] = []
    for i, receiver in enumerate(value):
        if not isinstance(receiver, str) or not receiver.strip() or len(receiver) > 4096:
            raise RequestError(f"receivers[{i}]", "must be a non-empty string", pid)
        if receiver.strip() not in out:  # one mail per person, however often listed
            out.append(receiver.strip())
    return out


def _attachments(data: dict[str, Any], pid: Any) -> list[dict[str, str]] | None:
    value = data.get("attachments")
    if value is None or value == []:
        return None
    if not isinstance(value, list):
        raise RequestError("attachments", "must be a list of {filename, path} objects", pid)
    if len(value) > MAX_ATTACHMENTS:
        raise RequestError("attachments", f"has more than {MAX_ATTACHMENTS} entries", pid)
    return [_attachment(item, f"attachments[{i}]", pid) for i, item in enumerate(value)]


def _attachment(item: Any, field: str, pid: Any) -> dict[str, str]:
    if not isinstance(item, dict):
        raise RequestError(field, "must be an object {filename, path}", pid)
    filename, path = item.get("filename"), item.get("path")
    if not isinstance(filename, str) or not filename.strip() or len(filename) > 255:
        raise RequestError(f"{field}.filename", "is required (at most 255 characters)", pid)
    if _FILENAME_FORBIDDEN & set(filename) or not filename.isprintable():
        raise RequestError(
            f"{field}.filename", 'must not contain / \\ " or control characters', pid
        )
    if len(encode_rfc2231(filename.strip(), "utf-8")) > MAX_ENCODED_FILENAME:
        # A mail header line may not exceed 998 characters (RFC 5322), encoded.
        raise RequestError(f"{field}.filename", "is too long once encoded for a mail", pid)
    if not isinstance(path, str) or not path.strip() or len(path) > 1024:
        raise RequestError(f"{field}.path", "is required: <bucket>/<key>", pid)
    if not path.isprintable():  # no key needs them; log lines and the reply would carry them
        raise RequestError(f"{field}.path", "must not contain control characters", pid)
    return {"filename": filename.strip(), "path": path.strip()}


def _optional_string(data: dict[str, Any], field: str, pid: Any, max_len: int) -> str | None:
    value = data.get(field)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > max_len or not value.isprintable():
        raise RequestError(field, f"must be a one-line string of at most {max_len} characters", pid)
    return value.strip() or None


def parse_notify(
    raw: bytes | None, max_bytes: int, *, header_pid: Any = None, max_receivers: int = 50
) -> NotifyRequest:
    """Parse a send-notification request; parameters merge ``contentParams`` < ``data``.

    A request the reply cannot be addressed to (no processInstanceId in the body or the
    header, no identifier) is still parsed; the caller dead-letters it if it is refused.
    """
    try:
        data = _decode(raw, max_bytes)
    except RequestError as exc:
        raise RequestError(exc.field, exc.reason, exc.process_instance_id or header_pid) from None
    pid, identifier = _notify_correlation(data, header_pid)
    params = dict(_object(data, "contentParams", pid))
    params.update(_object(data, "data", pid))
    if codec.depth(params) > MAX_PARAM_DEPTH:
        raise RequestError("data", f"is nested more than {MAX_PARAM_DEPTH} levels deep", pid)
    language = data.get("language")
    if language is not None and (
        not isinstance(language, str) or not LANGUAGE_RE.fullmatch(language)
    ):
        raise RequestError("language", "must be a language tag such as 'en' or 'pt-BR'", pid)
    channel = _channel(data, pid) if data.get("channel") is not None else None
    return NotifyRequest(
        process_instance_id=pid,
        identifier=identifier,
        template_name=_string(data, "templateName", pid, max_len=100),
        channel=channel,
        language=language,
        receivers=_receivers(data, pid, max_receivers),
        params=params,
        sender_email=_optional_string(data, "senderEmail", pid, 254),
        sender_name=_optional_string(data, "senderName", pid, 200),
        attachments=_attachments(data, pid),
    )


def notify_reply(
    req: NotifyRequest | None,
    *,
    channel: str | None,
    results: list[dict[str, Any]],
    error: str | None,
    forwarded: bool = False,
    fallback: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """FlowX's reply fields, always present (null when unknown), plus per-receiver results."""
    fields = fallback or {}
    return {
        "identifier": req.identifier if req else fields.get("identifier"),
        "templateName": req.template_name if req else fields.get("templateName"),
        "language": req.language if req else fields.get("language"),
        "channel": channel,
        "receivers": req.receivers if req else fields.get("receivers"),
        "error": error,
        "processInstanceId": req.process_instance_id if req else fields.get("processInstanceId"),
        "forwarded": forwarded,
        "results": results,
    }
