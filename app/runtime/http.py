"""aiohttp's answers before any view runs, made JSON like every other error of the API.

A request line or header that breaks HTTP (a control byte in a header value, a header line
without its colon, a ``Content-Length`` that is not a number, a line over 8 KiB) never reaches
a view or a middleware: aiohttp's connection handler answers it itself, in ``text/plain``,
quoting the offending line back, and logs that line with a traceback. The line may be a
credential: an over-long ``Authorization`` value is quoted without its header name, so no
redaction rule can tell it is one. Nor does an ``Expect`` other than ``100-continue`` reach
the middleware, which answers it in ``text/plain`` too.

:func:`install` wraps both handlers: the answer is this API's error body (the status aiohttp
chose, what is wrong, and the header it was in, never a value), and the log line says the same,
without the quoted text or the traceback.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from aiohttp import web, web_protocol, web_urldispatcher

from web.errors import error_response

log = logging.getLogger(__name__)

# aiohttp quotes the offending header line as a bytes literal, b'Name: value'; a quote that
# does not start with a name and its colon (a value alone, a request line) names no header.
_HEADER_LINE = re.compile(r"b['\"]([!#$%&*+.^_`|~0-9A-Za-z-]{1,64}):")
# Where a reason's own words end and aiohttp's quotation begins: ": b'...", " 'GET ...'".
_QUOTATION = re.compile(r"""[:\s]\s*b?['"].*""", re.DOTALL)


def parser_detail(message: str | None) -> dict[str, str]:
    """The field and reason of one of aiohttp's parser messages, without the text it quotes."""
    text = (message or "").strip()
    named = _HEADER_LINE.search(text)
    reason = _QUOTATION.sub("", text.split("\n", 1)[0]).rstrip(" :.")
    return {"field": named.group(1) if named else "request", "message": reason or "malformed"}


def install() -> None:
    """Answer in JSON what aiohttp answers before the views, in every aiohttp server of this
    process (idempotent). Routes made before the call keep aiohttp's ``Expect`` handler."""
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
        if not 400 <= status < 500:
            return original(self, request, status, exc, message)
        if request.writer.output_size > 0:  # as aiohttp: an answer is under way, none can follow
            raise ConnectionError("Response is sent already, cannot send another response")
        detail = parser_detail(message)
        log.warning(
            "refused a malformed HTTP request from %s: %s (%s)",
            request.remote,
            detail["message"],
            detail["field"],
        )
        answer = error_response(status, "malformed HTTP request", [detail])
        answer.force_close()  # as aiohttp does: the connection cannot be read further
        return answer

    handle_error.answers_json = True  # type: ignore[attr-defined]
    handler.handle_error = handle_error  # type: ignore[method-assign]

    expect_continue = web_urldispatcher._default_expect_handler

    async def expect_handler(request: web.Request) -> web.StreamResponse | None:
        try:
            await expect_continue(request)
        except web.HTTPExpectationFailed:
            detail = {"field": "Expect", "message": "only 100-continue is understood"}
            return error_response(417, "expectation not supported", [detail])
        return None

    web_urldispatcher._default_expect_handler = expect_handler  # type: ignore[assignment]
