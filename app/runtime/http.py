"""aiohttp's answer to a request it cannot parse, made JSON like every other error of the API.

A request line or header that breaks HTTP (a control byte in a header value, a header line
without its colon, a ``Content-Length`` that is not a number) never reaches a view or a
middleware: aiohttp's connection handler answers it itself, in ``text/plain``, quoting the
offending line back, header value included (a bearer token, if that was the line).

:func:`install` wraps that handler so the answer is this API's error body instead: the status
aiohttp chose, what is wrong, and the header it was in, never a value. aiohttp still logs the
failure (through this service's redacting formatter, like every line).
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web_protocol

from web.errors import error_response

# aiohttp quotes the offending header line as a bytes literal: b'Name: value' (b'Name value'
# when the colon is what is missing).
_HEADER_LINE = re.compile(r"b['\"]([!#$%&'*+.^_`|~0-9A-Za-z-]{1,64})[: \t]")
_REASON_ENDS = re.compile(r"[:'\"\n]")


def parser_detail(message: str | None) -> dict[str, str]:
    """The field and reason of one of aiohttp's parser messages, without the text it quotes."""
    text = message or ""
    named = _HEADER_LINE.search(text)
    reason = _REASON_ENDS.split(text.strip(), maxsplit=1)[0].strip()
    return {"field": named.group(1) if named else "request", "message": reason or "malformed"}


def install() -> None:
    """Answer unparsable requests in JSON in every aiohttp server of this process (idempotent)."""
    handler = web_protocol.RequestHandler
    original = handler.handle_error
    if getattr(original, "answers_json", False):
        return

    def handle_error(
        self: Any,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> Any:
        response = original(self, request, status, exc, message)  # logs; raises if mid-answer
        if not 400 <= status < 500:
            return response
        answer = error_response(status, "malformed HTTP request", [parser_detail(message)])
        answer.force_close()  # as aiohttp does: the connection cannot be read further
        return answer

    handle_error.answers_json = True  # type: ignore[attr-defined]
    handler.handle_error = handle_error  # type: ignore[method-assign]
