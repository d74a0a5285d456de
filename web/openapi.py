"""The OpenAPI 3.1 document of the HTTP API, served without a token at ``GET /api/openapi.json``.

The document states what the server does, and ``tests/integration/test_openapi_contract.py``
holds it to that (schemathesis, ``--checks all``, against a live worker): every route, every
parameter and body rule JSON Schema can state (built from the same patterns and limits the
views and :mod:`app.core.templates` apply, not copies of them), every status a route answers.

A few rules no JSON Schema states (a template body must compile; a mandatory parameter must be
used by it; preview data must carry the stored template's mandatory parameters ...) are listed
in the ``400`` answer of their operation, in prose and as ``x-beyond-schema``: the patterns of
the refusal's ``details`` field and message. A request the schemas admit may be refused only
for one of those; the contract test fails on any other refusal.

Adding a route: one :class:`Operation` in :func:`operations` (``AUTH_ERRORS`` and the shared
error texts come with ``auth=True``). ``tests/unit/test_openapi_document.py`` fails while a
route the app registers is missing from the document, or the other way round.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any

import faust
from aiohttp import web

from app.channels.twilio import TWILIO_CALLBACK_PATH
from app.core import templates as model
from app.flows import sendlog
from app.flows.receipts import TWILIO_STATUSES
from web.callbacks import _SID as MESSAGE_SID
from web.callbacks import MAX_CALLBACK_BYTES
from web.errors import json_response

JSON = "application/json"
ERROR = {"$ref": "#/components/schemas/Error"}
TEMPLATE = {"$ref": "#/components/schemas/Template"}
TEMPLATE_IN = {"$ref": "#/components/schemas/TemplateInput"}
OTP_STATUS = {"$ref": "#/components/schemas/OtpStatus"}

#: What every route behind the bearer token may answer besides its own statuses.
AUTH_ERRORS = {401: "missing or wrong bearer token"}
LOADING = "the service is still loading, or its store did not answer in time; retry"

# --------------------------------------------------------------------------- character classes
# JSON Schema patterns are ECMA-262 regular expressions, read with Unicode semantics
# (JSON Schema 2020-12, section 6.4): a code point is one character. Classes are spelled out
# (\uXXXX, astral code points literally) rather than with \s or \p{..}, whose meaning differs
# between regex dialects; each is computed from the same predicate the server applies.


def _char(code: int) -> str:
    return f"\\u{code:04x}" if code <= 0xFFFF else chr(code)


def char_class(codes: Iterable[int]) -> str:
    """A regex character class of ``codes`` (ascending), runs written as ranges."""
    runs: list[list[int]] = []
    for code in codes:
        if runs and runs[-1][1] == code - 1:
            runs[-1][1] = code
        else:
            runs.append([code, code])
    return "[" + "".join(_char(a) if a == b else f"{_char(a)}-{_char(b)}" for a, b in runs) + "]"


#: What ``str.strip`` strips (``str.isspace``: none is astral), and a character it keeps.
WHITESPACE = "".join(_char(code) for code in range(0x10000) if chr(code).isspace())
WHITESPACE_CLASS = f"[{WHITESPACE}]"
NOT_BLANK = f"[^{WHITESPACE}]"


#: Unicode categories an identifier may not contain (:func:`app.records.identifier`): controls,
#: format characters, surrogates, private use, unassigned, line and paragraph separators.
IDENTIFIER_REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
IDENTIFIER_MAX_CHARS = 200


@cache
def identifier_pattern() -> str:
    """Characters none of them refused, the first and last not whitespace (what ``str.strip``
    strips); the length bounds are ``minLength`` and ``maxLength``. The refused characters are
    named in a lookahead, not the allowed ones in a class: generators build a class member by
    member, and most of Unicode is unassigned. Surrogates are left out: they are not
    characters, no UTF-8 URL carries one, and some regex engines refuse them in a pattern."""
    category, refused = unicodedata.category, IDENTIFIER_REFUSED_CATEGORIES
    bad = char_class(
        code
        for code in range(0x110000)
        if not 0xD800 <= code <= 0xDFFF and category(chr(code)) in refused
    )
    return f"^(?!{WHITESPACE_CLASS})(?:(?!{bad})[\\s\\S])*(?<!{WHITESPACE_CLASS})$"


def _anchored(regex: re.Pattern[str]) -> str:
    """A server regex used with ``fullmatch`` as a JSON Schema pattern (which searches)."""
    return f"^(?:{regex.pattern})$"


# --------------------------------------------------------------------------- building blocks


@dataclass(frozen=True)
class Refusal:
    """A ``400`` to a request the schemas admit: a rule JSON Schema cannot state. Each of the
    refusal's ``details`` matches ``field`` and ``message`` (regular expressions, whole)."""

    rule: str
    field: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"rule": self.rule, "field": self.field, "message": self.message}


@dataclass(frozen=True)
class Operation:
    """One route and method: what it takes and every status it answers with. ``answers`` are
    full response objects (successes, and any answer whose body is not an ``Error``);
    ``errors`` map a status to why it is answered, the body being an ``Error``."""

    method: str
    path: str
    operation_id: str
    summary: str
    answers: dict[int, dict[str, Any]]
    errors: dict[int, str]
    parameters: tuple[dict[str, Any], ...] = ()
    body: dict[str, Any] | None = None
    auth: bool = True
    beyond_schema: tuple[Refusal, ...] = ()
    description: str | None = None
    tags: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        errors = {**(AUTH_ERRORS if self.auth else {}), **self.errors}
        responses = {str(s): r for s, r in sorted(self.answers.items())}
        for status, why in sorted(errors.items()):
            responses[str(status)] = _error(status, why, self.beyond_schema)
        op: dict[str, Any] = {"operationId": self.operation_id, "summary": self.summary}
        if self.description:
            op["description"] = self.description
        if self.tags:
            op["tags"] = list(self.tags)
        if not self.auth:
            op["security"] = []
        if self.parameters:
            op["parameters"] = list(self.parameters)
        if self.body is not None:
            op["requestBody"] = self.body
        return {**op, "responses": responses}


def _error(status: int, why: str, beyond: tuple[Refusal, ...]) -> dict[str, Any]:
    response: dict[str, Any] = {"description": why, "content": {JSON: {"schema": ERROR}}}
    if status == 400 and beyond:
        rules = "".join(f"\n- {r.rule}" for r in beyond)
        response["description"] = (
            f"{why}. A request the schemas admit is still refused when it breaks a rule "
            f"JSON Schema cannot state (`x-beyond-schema`):{rules}"
        )
        response["x-beyond-schema"] = [r.to_dict() for r in beyond]
    return response


def _json(schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}, **extra}


def _json_body(schema: dict[str, Any], max_body_bytes: int) -> dict[str, Any]:
    """A JSON request body; ``x-max-bytes`` is the size over which it is refused with ``413``
    (a bound on the encoded body, which JSON Schema's lengths and counts do not give)."""
    return {
        "required": True,
        "description": f"JSON, at most {max_body_bytes} bytes (API_MAX_BODY_BYTES) once "
        "decompressed",
        "content": {JSON: {"schema": schema}},
        "x-max-bytes": max_body_bytes,
    }


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "schema": schema, "description": description}


def _path(name: str, schema: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema, **extra}


def _template_links(operations: Iterable[str]) -> dict[str, Any]:
    """OpenAPI links from an answer carrying a template to the operations on it."""
    params = {"name": "$response.body#/name", "language": "$response.body#/language"}
    return {op: {"operationId": op, "parameters": params} for op in operations}


# --------------------------------------------------------------------------- the operations


@dataclass(frozen=True)
class Limits:
    """The settings the document depends on."""

    max_body_bytes: int
    max_body_chars: int
    default_language: str
    twilio_callbacks: bool


def limits_of(settings: Any) -> Limits:
    return Limits(
        max_body_bytes=settings.api_max_body_bytes,
        max_body_chars=settings.template_max_body_chars,
        default_language=settings.template_default_language,
        twilio_callbacks=bool(settings.twilio_auth_token and settings.public_base_url),
    )


NAME = _path(
    "name",
    {"type": "string", "pattern": _anchored(model.NAME_RE)},
    description=model.NAME_RULE,
    example="otpMail",
)
LANGUAGE_SCHEMA = {"type": "string", "pattern": f"^$|{_anchored(model.LANGUAGE_RE)}"}
CLIENT_ID = _path("clientId", {"$ref": "#/components/schemas/Identifier"}, example="42")

#: A number JSON allows but no 64-bit float holds (the server reads JSON with orjson).
HUGE_NUMBER = Refusal(
    "a JSON number must fit in a 64-bit float (about 1.8e308)",
    r"\$",
    "number is infinity when parsed as double.*",
)
#: check_fields' own messages for the subject and body: schema rules, never refusals here.
NOT_A_FIELD_RULE = r"(?!is required|is longer than|must be ).+"
#: Refusals of a template body the schemas admit, shared by create and replace.
TEMPLATE_REFUSALS = (
    Refusal(
        "the subject and body must compile (the Thymeleaf subset or Jinja2, sandboxed: no "
        "reach into Python internals, bounded nesting) and render with sample data within the "
        "render budget (time, loop iterations, output size; the message names the limit)",
        "subject|body",
        NOT_A_FIELD_RULE,
    ),
    Refusal(
        "every mandatory parameter must be used by the subject or the body",
        "params",
        "mandatory parameter '.+' is not used by the subject or body",
    ),
    Refusal("parameter keys must be unique", r"params\[\d+\]\.key", "duplicates '.+'"),
    Refusal(
        f"context may nest at most {model.MAX_CONTEXT_DEPTH} levels deep",
        "context",
        f"is nested more than {model.MAX_CONTEXT_DEPTH} levels deep",
    ),
    HUGE_NUMBER,
)
PREVIEW_REFUSALS = (
    Refusal(
        "data must carry every mandatory parameter of the stored template, not null or empty",
        r"data\..+",
        "is mandatory",
    ),
    Refusal(
        "the stored template must render with this data, within the render budget",
        "subject|body|data",
        "(?!must be an object).+",
    ),
    HUGE_NUMBER,
)


def template_operations(lim: Limits) -> list[Operation]:
    body = _json_body(TEMPLATE_IN, lim.max_body_bytes)
    language = _query(
        "language",
        LANGUAGE_SCHEMA,
        f"empty or absent: {lim.default_language} (TEMPLATE_DEFAULT_LANGUAGE)",
    )
    body_errors = {
        413: f"body over {lim.max_body_bytes} bytes (API_MAX_BODY_BYTES)",
        415: "body is not declared application/json",
    }
    not_found = "no template with this name and language"
    busy = f"{LOADING}; or every template renderer is busy"
    item_links = _template_links(
        ("getTemplate", "replaceTemplate", "deleteTemplate", "previewTemplate")
    )
    listing = {
        "type": "object",
        "required": ["items", "count"],
        "additionalProperties": False,
        "properties": {
            "items": {"type": "array", "items": TEMPLATE},
            "count": {"type": "integer", "minimum": 0},
        },
    }
    return [
        Operation(
            "get",
            "/api/template",
            "listTemplates",
            "List templates, filtered by type, language and active",
            answers={200: _json(listing, "the matching templates")},
            errors={400: "an invalid type or active filter", 503: LOADING},
            parameters=(
                _query("type", {"enum": list(model.TYPES)}, "only this type"),
                _query("language", {"type": "string"}, "only this language (exactly)"),
                _query(
                    "active",
                    {
                        "type": "string",
                        "pattern": "^(?:[Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]|"
                        "[Yy][Ee][Ss]|[Nn][Oo]|1|0)$",
                    },
                    "only active (true, 1, yes) or inactive (false, 0, no) ones, in any case",
                ),
            ),
            tags=("templates",),
        ),
        Operation(
            "post",
            "/api/template",
            "createTemplate",
            "Create a template (version 1)",
            answers={201: _json(TEMPLATE, "created", links=item_links)},
            errors={
                400: "an invalid template (details name each field and why)",
                409: "a template with this name and language exists (use PUT)",
                **body_errors,
                503: busy,
            },
            body=body,
            beyond_schema=TEMPLATE_REFUSALS,
            tags=("templates",),
        ),
        Operation(
            "get",
            "/api/template/{name}",
            "getTemplate",
            "Read a template",
            answers={200: _json(TEMPLATE, "the template")},
            errors={400: "an invalid name or language", 404: not_found, 503: LOADING},
            parameters=(NAME, language),
            tags=("templates",),
        ),
        Operation(
            "put",
            "/api/template/{name}",
            "replaceTemplate",
            "Replace a template (version + 1); the URL's name and language win over the body's",
            answers={200: _json(TEMPLATE, "replaced", links=item_links)},
            errors={
                400: "an invalid name, language or template",
                404: not_found,
                **body_errors,
                503: busy,
            },
            parameters=(NAME, language),
            body=body,
            beyond_schema=TEMPLATE_REFUSALS,
            tags=("templates",),
        ),
        Operation(
            "delete",
            "/api/template/{name}",
            "deleteTemplate",
            "Delete a template",
            answers={204: {"description": "deleted"}},
            errors={400: "an invalid name or language", 404: not_found, 503: LOADING},
            parameters=(NAME, language),
            tags=("templates",),
        ),
        Operation(
            "post",
            "/api/template/{name}/preview",
            "previewTemplate",
            "Render a stored template with sample data, exactly as a send would",
            answers={200: _json({"$ref": "#/components/schemas/Preview"}, "rendered")},
            errors={
                400: "an invalid name, language or preview request",
                404: not_found,
                **body_errors,
                503: busy,
            },
            parameters=(NAME, language),
            body=_json_body({"$ref": "#/components/schemas/PreviewRequest"}, lim.max_body_bytes),
            beyond_schema=PREVIEW_REFUSALS,
            tags=("templates",),
        ),
    ]


def otp_operations(lim: Limits) -> list[Operation]:
    no_code = "no code was generated for this clientId"
    return [
        Operation(
            "get",
            "/api/otp/{clientId}",
            "getOtp",
            "The identifier's current code: status, masked receiver, times, attempts and "
            "sends in the window (never the code)",
            answers={200: _json(OTP_STATUS, "the code")},
            errors={400: "an invalid clientId", 404: no_code, 503: LOADING},
            parameters=(CLIENT_ID,),
            tags=("otp",),
        ),
        Operation(
            "post",
            "/api/otp/{clientId}/cancel",
            "cancelOtp",
            "Cancel a pending code: later validates answer `code canceled`",
            answers={200: _json(OTP_STATUS, "canceled")},
            errors={
                400: "an invalid clientId",
                404: no_code,
                409: "the code is not pending (the error says what it is)",
                503: LOADING,
            },
            parameters=(CLIENT_ID,),
            tags=("otp",),
        ),
    ]


def notification_operations(lim: Limits) -> list[Operation]:
    text = {"type": "string", "minLength": 1, "maxLength": 320}
    filters = tuple(
        _query(name, text, f"only entries whose {name} is this") for name in sendlog.FILTERS
    )
    page = {
        "type": "object",
        "required": ["items", "next"],
        "additionalProperties": False,
        "properties": {
            "items": {"type": "array", "items": {"$ref": "#/components/schemas/SendLogEntry"}},
            "next": {
                "type": ["string", "null"],
                "description": "the cursor of the next page; null on the last one",
            },
        },
    }
    instant = {"type": "string", "format": "date-time"}
    return [
        Operation(
            "get",
            "/api/notifications",
            "listNotifications",
            "The send log: what was sent, to whom, and what became of it, newest first",
            description="Any other query parameter is refused (400). Times are ISO 8601; "
            "without a zone, UTC.",
            answers={200: _json(page, "one page of entries")},
            errors={400: "an unknown or invalid query parameter", 503: LOADING},
            parameters=(
                *filters,
                _query("since", instant, "only entries with an event at or after this time"),
                _query("until", instant, "only entries that began at or before this time"),
                _query(
                    "limit",
                    {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": sendlog.MAX_LIMIT,
                        "default": sendlog.DEFAULT_LIMIT,
                    },
                    "entries per page",
                ),
                _query("cursor", {"type": "string"}, "the `next` of the previous page"),
            ),
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
            "MessageSid": {"type": "string", "pattern": _anchored(MESSAGE_SID)},
            "MessageStatus": {"enum": sorted(TWILIO_STATUSES)},
            "ErrorCode": {"type": "string", "description": "ignored unless 1-10 digits"},
        },
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
                503: "the service is still loading, or the report could not be applied in "
                "time; retry",
            },
            parameters=(
                {
                    "name": "X-Twilio-Signature",
                    "in": "header",
                    "required": True,
                    "schema": {"type": "string"},
                },
            ),
            body={
                "required": True,
                "content": {"application/x-www-form-urlencoded": {"schema": form}},
                "x-max-bytes": MAX_CALLBACK_BYTES,
            },
            auth=False,
            tags=("callbacks",),
        )
    ]


def service_operations(lim: Limits) -> list[Operation]:
    ready = {
        "type": "object",
        "required": ["ready", "checks", "templates"],
        "additionalProperties": False,
        "properties": {
            "ready": {"type": "boolean"},
            "checks": {
                "type": "object",
                "required": ["partitionsAssigned", "recoveryComplete", "templatesLoaded"],
                "additionalProperties": False,
                "properties": {
                    "partitionsAssigned": {"type": "boolean"},
                    "recoveryComplete": {"type": "boolean"},
                    "templatesLoaded": {"type": "boolean"},
                },
            },
            "templates": {"type": "integer", "minimum": 0},
        },
    }
    health = {
        "type": "object",
        "required": ["status"],
        "additionalProperties": False,
        "properties": {"status": {"const": "ok"}},
    }
    return [
        Operation(
            "get",
            "/api/openapi.json",
            "getOpenApi",
            "This document",
            answers={200: _json({"type": "object"}, "the OpenAPI document")},
            errors={},
            auth=False,
            tags=("service",),
        ),
        Operation(
            "get",
            "/health",
            "getHealth",
            "Liveness: the worker's web server answers",
            answers={200: _json(health, "alive")},
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
                200: _json(ready, "ready"),
                503: _json(ready, "not ready: the checks say what is missing"),
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
            answers={
                200: {
                    "description": "Prometheus text exposition format",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
            errors={},
            auth=False,
            tags=("service",),
        ),
    ]


def operations(lim: Limits) -> list[Operation]:
    return [
        *template_operations(lim),
        *otp_operations(lim),
        *notification_operations(lim),
        *callback_operations(lim),
        *service_operations(lim),
    ]


# --------------------------------------------------------------------------- components


def _template_schemas(lim: Limits) -> dict[str, Any]:
    name = {"type": "string", "pattern": _anchored(model.NAME_RE)}
    language = {"type": "string", "pattern": _anchored(model.LANGUAGE_RE)}
    key = {"type": "string", "pattern": _anchored(model.PARAM_KEY_RE)}
    subject = {"type": "string", "maxLength": model.MAX_SUBJECT_CHARS, "pattern": "^[^\\n\\r]*$"}
    body = {
        "type": "string",
        "maxLength": lim.max_body_chars,
        "pattern": NOT_BLANK,
        "description": "Thymeleaf subset ([(${x})], [[${x}]], th:text, th:utext, th:if, "
        "th:unless, th:each) or Jinja2 ({{ x }}); otpValue is injected by the service. "
        f"At most {lim.max_body_chars} characters (TEMPLATE_MAX_BODY_CHARS), not blank.",
    }
    stored = {
        "name": name,
        "type": {"enum": list(model.TYPES)},
        "strategyType": {"type": ["string", "null"], "maxLength": 100},
        "active": {"type": "boolean"},
        "forwardOnKafka": {"type": "boolean"},
        "language": language,
        "subject": {"anyOf": [subject, {"type": "null"}]},
        "body": {**body, "description": "as sent"},
        "context": {"type": "array"},
        "params": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["key", "mandatory"],
                "additionalProperties": False,
                "properties": {"key": key, "mandatory": {"type": "boolean"}},
            },
        },
        "version": {"type": "integer", "minimum": 1},
        "createdAt": {"type": "string", "format": "date-time"},
        "updatedAt": {"type": "string", "format": "date-time"},
    }
    falsy = [None, False, 0, "", [], {}]
    fields = {
        "name": {**name, "description": model.NAME_RULE},
        "strategyType": {"type": ["string", "null"], "maxLength": 100},
        "active": {"type": "boolean", "default": True},
        "forwardOnKafka": {
            "type": "boolean",
            "default": False,
            "description": "notifications go to KAFKA_TOPIC_NOTIFICATION_EXTERNAL_OUT for an "
            "external adapter instead of being sent",
        },
        "language": {
            "anyOf": [language, {"enum": falsy}],
            "description": "a language tag such as 'en' or 'pt-BR'; absent or any JSON false "
            f"value (null, false, 0, '', [], {{}}): {lim.default_language} "
            "(TEMPLATE_DEFAULT_LANGUAGE)",
        },
        "body": body,
        "context": {
            "type": ["array", "null"],
            "description": "free-form JSON, stored as sent (null: [])",
        },
        "params": {
            "type": ["array", "null"],
            "maxItems": model.MAX_PARAMS,
            "items": {
                "type": "object",
                "required": ["key"],
                "properties": {"key": key, "mandatory": {"type": "boolean", "default": False}},
            },
        },
    }
    one_line = f"one line of at most {model.MAX_SUBJECT_CHARS} characters"

    def template_input(types: list[str], subject_schema: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "object",
            "description": "Unknown fields are dropped, not refused (FlowX clients send extra "
            "keys).",
            "required": ["name", "type", "body", *(["subject"] if "MAIL" in types else [])],
            "properties": {"type": {"enum": types}, "subject": subject_schema, **fields},
        }

    mail_input = template_input(["MAIL"], {**subject, "description": f"{one_line}; required"})
    text_input = template_input(
        [t for t in model.TYPES if t != "MAIL"],
        {"anyOf": [subject, {"type": "null"}], "description": one_line},
    )
    # oneOf on the type rather than if/then: the same rule, and what OpenAPI tools render
    inputs = {"MailTemplateInput": mail_input, "TextTemplateInput": text_input}
    template_in = {
        "oneOf": [{"$ref": f"#/components/schemas/{name}"} for name in inputs],
        "discriminator": {
            "propertyName": "type",
            "mapping": {
                t: f"#/components/schemas/{'Mail' if t == 'MAIL' else 'Text'}TemplateInput"
                for t in model.TYPES
            },
        },
    }
    template = {
        "type": "object",
        "required": list(stored),
        "additionalProperties": False,
        "properties": stored,
    }
    preview = {
        "type": "object",
        "required": ["name", "language", "type", "version", "subject", "body", "text", "otpValue"],
        "additionalProperties": False,
        "properties": {
            "name": name,
            "language": language,
            "type": {"enum": list(model.TYPES)},
            "version": {"type": "integer", "minimum": 1},
            "subject": {"type": ["string", "null"]},
            "body": {"type": "string"},
            "text": {
                "type": ["string", "null"],
                "description": "the plain-text alternative of a MAIL body; null otherwise",
            },
            "otpValue": {"type": "string", "description": "the sample code rendered"},
        },
    }
    preview_request = {
        "type": "object",
        "example": {"data": {"clientId": "42"}},
        "properties": {
            "data": {
                "type": "object",
                "description": "template parameters; otpValue is set by the service",
            }
        },
    }
    return {
        "TemplateInput": template_in,
        **inputs,
        "Template": template,
        "PreviewRequest": preview_request,
        "Preview": preview,
    }


def _otp_schemas() -> dict[str, Any]:
    time = {"type": "string", "format": "date-time"}
    count = {"type": "integer", "minimum": 0}
    status = {
        "clientId": {"type": "string"},
        "status": {"enum": ["pending", "approved", "expired", "max_attempts_reached", "canceled"]},
        "channel": {"type": "string"},
        "receiver": {"type": ["string", "null"], "description": "masked"},
        "processInstanceId": {"description": "as the generate request gave it"},
        "issuedAt": time,
        "expiresAt": time,
        "attempts": count,
        "attemptsRemaining": count,
        "sendsInWindow": count,
        "maxSends": count,
    }
    identifier = {
        "type": "string",
        "minLength": 1,
        "maxLength": IDENTIFIER_MAX_CHARS,
        "pattern": identifier_pattern(),
        "description": f"1-{IDENTIFIER_MAX_CHARS} characters, no leading or trailing "
        "whitespace, none of Unicode's control, format, surrogate, private-use, unassigned, "
        f"line or paragraph separator characters (Unicode {unicodedata.unidata_version}, as "
        "this server reads it; the pattern spells that out)",
    }
    return {
        "Identifier": identifier,
        "OtpStatus": {
            "type": "object",
            "required": list(status),
            "additionalProperties": False,
            "properties": status,
        },
    }


def _common_schemas() -> dict[str, Any]:
    text_or_null = {"type": ["string", "null"]}
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
            "clientId": {},
            "identifier": {},
            "processInstanceId": {},
            "templateName": {},
            "language": {},
        },
    }
    error = {
        "type": "object",
        "required": ["error", "details"],
        "additionalProperties": False,
        "properties": {
            "error": {"type": "string", "minLength": 1},
            "details": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["field", "message"],
                    "additionalProperties": False,
                    "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
                },
            },
        },
    }
    return {"SendLogEntry": entry, "Error": error}


# --------------------------------------------------------------------------- the document


def document(lim: Limits) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for op in operations(lim):
        paths.setdefault(op.path, {})[op.method] = op.to_dict()
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "faust-otp",
            "version": "1.0.0",
            "description": "Notification templates OTPs are rendered into (FlowX-compatible), "
            "the OTP status of an identifier, the send log, and the service's health. "
            "Every /api route but this document and provider callbacks needs "
            "`Authorization: Bearer <NOTIFY_API_TOKEN>` (unless NOTIFY_API_AUTH=disabled). "
            f"A request body over {lim.max_body_bytes} bytes (API_MAX_BODY_BYTES) is refused "
            "with 413 on any route; a method a path does not have, with 405 and `Allow`. "
            "Every error is JSON: `Error`.",
        },
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                **_template_schemas(lim),
                **_otp_schemas(),
                **_common_schemas(),
            },
        },
    }


def register(ctx: Any) -> None:
    doc = document(limits_of(ctx.settings))

    @ctx.app.page("/api/openapi.json", name="openapi")
    class OpenApi(faust.web.View):
        async def get(self, request: web.Request) -> web.Response:
            return json_response(doc)
