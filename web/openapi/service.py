"""Everything but templates: OTP status, the send log, provider callbacks, who am I, the
console, health, readiness, metrics and this document."""

from __future__ import annotations

import unicodedata
from typing import Any

from app.channels.twilio import TWILIO_CALLBACK_PATH
from app.core.access import ADMIN, SCOPES
from app.flows import sendlog
from app.flows.receipts import TWILIO_STATUSES
from web import console
from web.callbacks import _SID as MESSAGE_SID
from web.callbacks import MAX_CALLBACK_BYTES
from web.openapi.base import (
    IDENTIFIER_MAX_CHARS,
    LOADING,
    Limits,
    Operation,
    Refusal,
    anchored,
    answer,
    closed,
    identifier_pattern,
    path,
    query,
    ref,
)

OTP_STATUS = ref("OtpStatus")
CLIENT_ID = path("clientId", ref("Identifier"), example="42")


def schemas(lim: Limits) -> dict[str, Any]:
    time = {"type": "string", "format": "date-time"}
    count = {"type": "integer", "minimum": 0}
    text_or_null = {"type": ["string", "null"]}
    status = {
        "clientId": {"type": "string"},
        "status": {"enum": ["pending", "approved", "expired", "max_attempts_reached", "canceled"]},
        "channel": {"type": "string"},
        "receiver": {**text_or_null, "description": "masked"},
        "processInstanceId": {"description": "as the generate request gave it"},
        "issuedAt": time,
        "expiresAt": time,
        "attempts": count,
        "attemptsRemaining": count,
        "sendsInWindow": count,
        "maxSends": count,
    }
    entry = {
        "type": "object",
        "required": ["id", "receiver", "channel", "at", "last", "status", "events"],
        "properties": {
            "id": {"type": "string"},
            "receiver": {"type": "string"},
            "channel": text_or_null,
            "at": {"type": "string", "description": "the first event's time"},
            "last": {"type": "string", "description": "the latest event's time"},
            "status": text_or_null,
            "events": {"type": "array", "items": {"type": "object"}},
            **{name: {} for name in ("clientId", "identifier", "processInstanceId")},
            **{name: {} for name in ("templateName", "language")},
        },
    }
    detail = closed({"field": {"type": "string"}, "message": {"type": "string"}})
    return {
        "Identifier": {
            "type": "string",
            "minLength": 1,
            "maxLength": IDENTIFIER_MAX_CHARS,
            "pattern": identifier_pattern(),
            "description": f"1-{IDENTIFIER_MAX_CHARS} characters, no leading or trailing "
            "whitespace, none of Unicode's control, format, surrogate, private-use, "
            "unassigned, line or paragraph separator characters (Unicode "
            f"{unicodedata.unidata_version}, as this server reads it; the pattern spells "
            "that out)",
        },
        "OtpStatus": closed(status),
        "SendLogEntry": entry,
        "Principal": closed(
            {
                "name": {"type": "string"},
                "scopes": {"type": "array", "items": {"enum": list(SCOPES)}},
            }
        ),
        "Detail": detail,
        "Error": closed(
            {
                "error": {"type": "string", "minLength": 1},
                "details": {"type": "array", "items": ref("Detail")},
            }
        ),
    }


def otp_operations(lim: Limits) -> list[Operation]:
    no_code = "no code was generated for this clientId"
    return [
        Operation(
            "get",
            "/api/otp/{clientId}",
            "getOtp",
            "The identifier's current code: status, masked receiver, times, attempts and "
            "sends in the window (never the code)",
            answers={200: answer(OTP_STATUS, "the code")},
            errors={400: "an invalid clientId", 404: no_code, 503: LOADING},
            parameters=(CLIENT_ID,),
            scope=ADMIN,
            tags=("otp",),
        ),
        Operation(
            "post",
            "/api/otp/{clientId}/cancel",
            "cancelOtp",
            "Cancel a pending code: later validates answer `code canceled`",
            answers={200: answer(OTP_STATUS, "canceled")},
            errors={
                400: "an invalid clientId",
                404: no_code,
                409: "the code is not pending (the error says what it is)",
                503: LOADING,
            },
            parameters=(CLIENT_ID,),
            scope=ADMIN,
            tags=("otp",),
        ),
    ]


def notification_operations(lim: Limits) -> list[Operation]:
    text = {"type": "string", "minLength": 1, "maxLength": 320}
    filters = tuple(
        query(name, text, f"only entries whose {name} is this") for name in sendlog.FILTERS
    )
    page = closed(
        {
            "items": {"type": "array", "items": ref("SendLogEntry")},
            "next": {
                "type": ["string", "null"],
                "description": "the cursor of the next page; null on the last one",
            },
        }
    )
    instant = {"type": "string", "format": "date-time"}
    limit = {
        "type": "integer",
        "minimum": 1,
        "maximum": sendlog.MAX_LIMIT,
        "default": sendlog.DEFAULT_LIMIT,
    }
    return [
        Operation(
            "get",
            "/api/notifications",
            "listNotifications",
            "The send log: what was sent, to whom, and what became of it, newest first",
            description="Any other query parameter is refused (400). Times are ISO 8601; "
            "without a zone, UTC.",
            answers={200: answer(page, "one page of entries")},
            errors={400: "an unknown or invalid query parameter", 503: LOADING},
            parameters=(
                *filters,
                query("since", instant, "only entries with an event at or after this time"),
                query("until", instant, "only entries that began at or before this time"),
                query("limit", limit, "entries per page"),
                query("cursor", {"type": "string"}, "the `next` of the previous page"),
            ),
            scope=ADMIN,
            beyond_schema=(
                Refusal("until must not be before since", "until", "is before since"),
                Refusal(
                    "a cursor must be one this service gave out (`next`)",
                    "cursor",
                    "is not a cursor this service gave out",
                ),
            ),
            tags=("send log",),
        )
    ]


def callback_operations(lim: Limits) -> list[Operation]:
    """Only when callbacks are on (TWILIO_AUTH_TOKEN and PUBLIC_BASE_URL): off, the route
    answers 404 to everything, as an unknown path does."""
    if not lim.twilio_callbacks:
        return []
    form = {
        "type": "object",
        "required": ["MessageSid", "MessageStatus"],
        "properties": {
            "MessageSid": {"type": "string", "pattern": anchored(MESSAGE_SID)},
            "MessageStatus": {"enum": sorted(TWILIO_STATUSES)},
            "ErrorCode": {"type": "string", "description": "ignored unless 1-10 digits"},
        },
    }
    signature = {
        "name": "X-Twilio-Signature",
        "in": "header",
        "required": True,
        "schema": {"type": "string"},
    }
    return [
        Operation(
            "post",
            TWILIO_CALLBACK_PATH,
            "twilioStatusCallback",
            "Twilio's message status report (Twilio's form POST, signed)",
            description="No bearer token: Twilio signs the request (X-Twilio-Signature over "
            "PUBLIC_BASE_URL + the path and the form parameters). Answered once the "
            "message's owner applied the report.",
            answers={204: {"description": "applied"}},
            errors={
                400: "the form names no message SID or an unknown status",
                403: "missing or wrong X-Twilio-Signature",
                404: "a MessageSid this service never sent",
                413: f"body over {MAX_CALLBACK_BYTES} bytes",
                503: "the service is still loading, or the report could not be applied (in "
                "time); retry",
            },
            parameters=(signature,),
            body={
                "required": True,
                "content": {"application/x-www-form-urlencoded": {"schema": form}},
                "x-max-bytes": MAX_CALLBACK_BYTES,
            },
            auth=False,
            tags=("callbacks",),
        )
    ]


def _static(media_types: list[str], description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {media: {"schema": {"type": "string"}} for media in media_types},
    }


def console_operations(lim: Limits) -> list[Operation]:
    etag = {
        "name": "If-None-Match",
        "in": "header",
        "required": False,
        "schema": {"type": "string"},
        "description": "the ETag of the copy held: 304 if it is this version's",
    }
    unchanged = {304: {"description": "the copy held is this version's"}}
    asset = path("asset", {"enum": sorted(console.ASSETS)}, description="a console file")
    return [
        Operation(
            "get",
            "/console",
            "getConsole",
            "The template console: a page that calls this API from the browser with the "
            "token typed into it",
            answers={200: _static(["text/html"], "the page"), **unchanged},
            errors={},
            parameters=(etag,),
            auth=False,
            tags=("console",),
        ),
        Operation(
            "get",
            "/console/{asset}",
            "getConsoleAsset",
            "One of the console's files",
            answers={
                200: _static(sorted(set(console.ASSETS.values())), "the file"),
                **unchanged,
            },
            errors={404: "no such console file"},
            parameters=(asset, etag),
            auth=False,
            tags=("console",),
        ),
    ]


def service_operations(lim: Limits) -> list[Operation]:
    checks = {
        name: {"type": "boolean"}
        for name in ("partitionsAssigned", "recoveryComplete", "templatesLoaded")
    }
    ready = closed(
        {
            "ready": {"type": "boolean"},
            "checks": closed(checks),
            "templates": {"type": "integer", "minimum": 0},
        }
    )
    return [
        Operation(
            "get",
            "/api/whoami",
            "whoAmI",
            "The token's name and scopes",
            answers={200: answer(ref("Principal"), "who the token is")},
            errors={},
            tags=("service",),
        ),
        Operation(
            "get",
            "/api/openapi.json",
            "getOpenApi",
            "This document",
            answers={200: answer({"type": "object"}, "the OpenAPI document")},
            errors={},
            auth=False,
            tags=("service",),
        ),
        Operation(
            "get",
            "/health",
            "getHealth",
            "Liveness: the worker's web server answers",
            answers={200: answer(closed({"status": {"const": "ok"}}), "alive")},
            errors={},
            auth=False,
            tags=("service",),
        ),
        Operation(
            "get",
            "/ready",
            "getReady",
            "Readiness: partitions assigned, table recovery finished, templates loaded",
            answers={
                200: answer(ready, "ready"),
                503: answer(ready, "not ready: the checks say what is missing"),
            },
            errors={},
            auth=False,
            tags=("service",),
        ),
        Operation(
            "get",
            "/metrics",
            "getMetrics",
            "This worker's Prometheus metrics",
            answers={200: _static(["text/plain"], "Prometheus text exposition format")},
            errors={},
            auth=False,
            tags=("service",),
        ),
    ]


def operations(lim: Limits) -> list[Operation]:
    return [
        *otp_operations(lim),
        *notification_operations(lim),
        *callback_operations(lim),
        *console_operations(lim),
        *service_operations(lim),
    ]
