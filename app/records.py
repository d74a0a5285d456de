"""Wire records of the engine contract: parse requests, shape replies.

Parsing is strict about what the service needs and lenient about what it ignores, because the
engine is not ours: unknown fields are template parameters, never an error. Every refusal is a
:class:`RequestError` naming the field, and carries the ``processInstanceId`` when one could be
read, so the agent can answer the engine instead of dead-lettering the message.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app import codec
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

    @property
    def key(self) -> str:
        return str(self.client_id)


@dataclass(frozen=True)
class ValidateRequest:
    process_instance_id: Any
    client_id: Any
    channel: str
    otp: str

    @property
    def key(self) -> str:
        return str(self.client_id)


def _decode(raw: bytes | None, max_bytes: int) -> dict[str, Any]:
    if raw is None:
        raise RequestError(None, "empty message")
    if len(raw) > max_bytes:
        raise RequestError(None, f"message of {len(raw)} bytes is over the {max_bytes}-byte limit")
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


def _identifier(value: Any, field: str, pid: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | str) or value == "":
        raise RequestError(field, "is required (a number or a non-empty string)", pid)
    if len(str(value)) > 200:
        raise RequestError(field, "is longer than 200 characters", pid)
    return value


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
    if RESERVED_PARAMS & params.keys():
        # The service chooses the code; a request must never be able to choose its own.
        raise RequestError("otpValue", "is reserved: the service generates the code", pid)
    language = data.get("language")
    if language is not None and (
        not isinstance(language, str) or not LANGUAGE_RE.fullmatch(language)
    ):
        raise RequestError("language", "must be a language tag such as 'en' or 'pt-BR'", pid)
    return GenerateRequest(
        process_instance_id=pid,
        template_name=_string(data, "templateName", pid, max_len=100),
        channel=_channel(data, pid),
        recipient=_string(data, "recipient", pid, max_len=4096),
        language=language,
        client_id=_identifier(params.get("clientId"), "clientId", pid),
        params=params,
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
        client_id=_identifier(data.get("clientId"), "clientId", pid),
        channel=_channel(data, pid),
        otp=otp.strip(),
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


def generate_reply(
    process_instance_id: Any, client_id: Any, channel: str | None, sent: bool, error: str | None
) -> dict[str, Any]:
    """The seed's reply shape, field for field."""
    return {
        "processInstanceId": process_instance_id,
        "clientId": client_id,
        "channel": channel,
        "otpSent": sent,
        "error": error,
    }


def validate_reply(
    process_instance_id: Any, client_id: Any, channel: str | None, valid: bool, error: str | None
) -> dict[str, Any]:
    return {
        "processInstanceId": process_instance_id,
        "clientId": client_id,
        "channel": channel,
        "otpValid": valid,
        "error": error,
    }
