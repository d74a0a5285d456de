"""The document's building blocks: an operation, a refusal beyond the schema, patterns.

JSON Schema patterns are ECMA-262 regular expressions, read with Unicode semantics (JSON Schema
2020-12, section 6.4): a code point is one character, ``$`` the end of the string. Character
classes are spelled out (``\\uXXXX``, astral code points literally) rather than with ``\\s`` or
``\\p{..}``, whose meaning differs between regex dialects; each is computed from the predicate
the server applies.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any

JSON = "application/json"


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


ERROR = ref("Error")
#: What every route behind the bearer token may answer besides its own statuses.
UNAUTHENTICATED = "missing or wrong bearer token"
#: What every route may answer (``web.query``), before anything else.
URL_REFUSED = (
    "a query parameter the operation does not list, or one given twice, or a path or query "
    "that is not UTF-8 once percent-decoded"
)
FORBIDDEN = "the token lacks the scope this operation needs (the error names it)"
FORBIDDEN_OR_CROSS_ORIGIN = f"{FORBIDDEN}, or a browser sent it from a page of another origin"
LOADING = "the service is still loading, or its store did not answer in time; retry"
#: The JSON values ``templates.or_default`` replaces by the default: null and the empty string.
DEFAULTED = [None, ""]
#: Query flags read by ``web.http.query_bool``: true, 1, yes, false, 0, no, in any case.
FLAG = {
    "type": "string",
    "pattern": "^(?:[Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]|[Yy][Ee][Ss]|[Nn][Oo]|1|0)$",
    "description": "true, 1 or yes; false, 0 or no (any case)",
}


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


# --------------------------------------------------------------------------- patterns


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


def anchored(regex: re.Pattern[str]) -> str:
    """A server regex used with ``fullmatch`` as a JSON Schema pattern (which searches)."""
    return f"^(?:{regex.pattern})$"


def or_default(schema: dict[str, Any], default: str) -> dict[str, Any]:
    """A field read with ``templates.or_default``: absent, null or "" is the default."""
    return {
        "anyOf": [schema, {"enum": DEFAULTED}],
        "description": f"absent, null or '': {default}",
    }


def closed(properties: dict[str, Any], optional: Iterable[str] = ()) -> dict[str, Any]:
    """An object of exactly these properties (a response body), all but ``optional`` always
    present."""
    left_out = set(optional)
    return {
        "type": "object",
        "required": [name for name in properties if name not in left_out],
        "additionalProperties": False,
        "properties": properties,
    }


# --------------------------------------------------------------------------- operations


@dataclass(frozen=True)
class Refusal:
    """A ``400`` to a request the schemas admit: a rule JSON Schema cannot state. Each of the
    refusal's ``details`` matches ``field`` and ``message`` (regular expressions, whole)."""

    rule: str
    field: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"rule": self.rule, "field": self.field, "message": self.message}

    def under(self, prefix: str) -> Refusal:
        """The same rule for a template nested at ``prefix`` (``template.``, ``templates[i].``)."""
        return Refusal(self.rule, f"{prefix}(?:{self.field})", self.message)


@dataclass(frozen=True)
class Operation:
    """One route and method: what it takes and every status it answers with.

    ``answers`` are full response objects (successes, and any answer whose body is not an
    ``Error``); ``errors`` map a status to why it is answered, the body an ``Error``.
    ``scope`` is the token scope the operation needs (``auth`` without one: any valid token);
    ``auth=False``: no token at all.
    """

    method: str
    path: str
    operation_id: str
    summary: str
    answers: dict[int, dict[str, Any]]
    errors: dict[int, str]
    parameters: tuple[dict[str, Any], ...] = ()
    body: dict[str, Any] | None = None
    auth: bool = True
    scope: str | None = None
    beyond_schema: tuple[Refusal, ...] = ()
    description: str | None = None
    tags: tuple[str, ...] = ()

    def _security(self) -> tuple[dict[int, str], list[dict[str, list[str]]] | None, str]:
        if not self.auth:
            return {}, [], ""
        if self.scope is None:
            return {401: UNAUTHENTICATED}, None, ""
        needs = f"Needs a token with the `{self.scope}` scope (`admin` has every scope)."
        forbidden = FORBIDDEN if self.method in ("get", "head") else FORBIDDEN_OR_CROSS_ORIGIN
        return {401: UNAUTHENTICATED, 403: forbidden}, [{"bearer": [self.scope]}], needs

    def to_dict(self) -> dict[str, Any]:
        auth_errors, security, needs = self._security()
        responses = {str(s): r for s, r in sorted(self.answers.items())}
        errors = {**auth_errors, **self.errors}
        errors[400] = f"{errors[400]}; or {URL_REFUSED}" if 400 in errors else URL_REFUSED
        for status, why in sorted(errors.items()):
            responses.setdefault(str(status), _error(status, why, self.beyond_schema))
        op: dict[str, Any] = {"operationId": self.operation_id, "summary": self.summary}
        description = " ".join(text for text in (self.description, needs) if text)
        if description:
            op["description"] = description
        if self.tags:
            op["tags"] = list(self.tags)
        if security is not None:
            op["security"] = security
        if self.scope is not None:
            op["x-scope"] = self.scope
        if self.parameters:
            op["parameters"] = list(self.parameters)
        if self.body is not None:
            op["requestBody"] = self.body
        return {**op, "responses": responses}


def beyond(why: str, refusals: tuple[Refusal, ...]) -> dict[str, Any]:
    """The parts of a ``400`` answer that list ``refusals``: description and extension."""
    rules = "".join(f"\n- {r.rule}" for r in refusals)
    return {
        "description": f"{why}. A request the schemas admit is still refused when it breaks "
        f"a rule JSON Schema cannot state (`x-beyond-schema`):{rules}",
        "x-beyond-schema": [r.to_dict() for r in refusals],
    }


def _error(status: int, why: str, refusals: tuple[Refusal, ...]) -> dict[str, Any]:
    response: dict[str, Any] = {"description": why, "content": {JSON: {"schema": ERROR}}}
    if status == 400 and refusals:
        response.update(beyond(why, refusals))
    return response


def answer(schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    """A JSON response object."""
    return {"description": description, "content": {JSON: {"schema": schema}}, **extra}


def json_body(schema: dict[str, Any], max_body_bytes: int) -> dict[str, Any]:
    """A JSON request body; ``x-max-bytes`` is the size over which it is refused with ``413``
    (a bound on the encoded body, which JSON Schema's lengths and counts do not give)."""
    return {
        "required": True,
        "description": f"JSON, at most {max_body_bytes} bytes (API_MAX_BODY_BYTES) once "
        "decompressed",
        "content": {JSON: {"schema": schema}},
        "x-max-bytes": max_body_bytes,
    }


def body_errors(lim: Limits) -> dict[int, str]:
    return {
        408: "the body did not arrive within 10 s",
        413: f"body over {lim.max_body_bytes} bytes (API_MAX_BODY_BYTES)",
        415: "body is not declared application/json",
    }


def query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "schema": schema, "description": description}


def path(name: str, schema: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema, **extra}
