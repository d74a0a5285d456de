"""The HTTP boundary's one error type and the middleware that turns every failure into JSON.

Views raise :class:`ApiError`; everything else that escapes a view (aiohttp's own 404/405/413,
an unexpected bug) is caught here too, so no request ever gets an HTML page or a traceback.
A ``405`` names the methods the resource has in ``Allow``, as RFC 9110 requires.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web

from app import codec

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An answer other than success: status, a sentence, and per-field details."""

    def __init__(self, status: int, error: str, details: Iterable[dict[str, Any]] = ()) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.details = list(details)


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=codec.dumps(body), status=status, content_type="application/json", headers=headers
    )


#: How much of a streamed answer is encoded before the event loop gets a turn.
STREAM_CHUNK_BYTES = 64 * 1024


async def json_stream(
    request: web.Request, fields: dict[str, Any], name: str, items: Iterable[Any]
) -> web.StreamResponse:
    """``fields`` plus ``name``: the list of ``items``, as one JSON object sent in chunks.

    Every template listed or exported at once is tens of megabytes of JSON, whose one
    ``dumps`` held the event loop (and ``/health``) for a second per request. Encoded item by
    item, the loop gets a turn every :data:`STREAM_CHUNK_BYTES`, and no whole copy is held.
    """
    if request.method == "HEAD":  # what a GET would answer, without its body (RFC 9110 9.3.2)
        return web.Response(content_type="application/json")
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    try:
        head = codec.dumps(fields)
        chunk = bytearray(head[:-1] + (b"," if fields else b"") + codec.dumps(name) + b":[")
        for n, item in enumerate(items):
            if n:
                chunk += b","
            chunk += codec.dumps(item)
            if len(chunk) >= STREAM_CHUNK_BYTES:
                await response.write(bytes(chunk))
                chunk.clear()
                await asyncio.sleep(0)  # a write under the high-water mark does not yield
        chunk += b"]}"
        await response.write(bytes(chunk))
        await response.write_eof()
    except (Exception, asyncio.CancelledError) as exc:
        # The status line is sent: no error answer can follow it on this connection, which
        # ends here, so the client sees a cut answer rather than a 500 inside a 200.
        if not isinstance(exc, asyncio.CancelledError | ConnectionError):
            log.exception("streamed answer to %s %s failed", request.method, request.path)
        if request.transport is not None:
            request.transport.close()
        if isinstance(exc, asyncio.CancelledError):
            raise
    return response


def error_response(status: int, error: str, details: Iterable[dict[str, Any]] = ()) -> web.Response:
    return json_response({"error": error, "details": list(details)}, status=status)


def allow_header(methods: Iterable[str]) -> str:
    """``Allow`` for a resource with ``methods`` routed. Faust routes ``HEAD`` on every view and
    answers it with the view's ``get``: without a ``get``, ``HEAD`` is not allowed either."""
    allowed = {m.upper() for m in methods}
    if "GET" not in allowed:
        allowed.discard("HEAD")
    return ", ".join(sorted(allowed))


def method_not_allowed(request: web.Request, methods: Iterable[str]) -> web.Response:
    response = error_response(405, f"method {request.method} is not allowed here")
    response.headers["Allow"] = allow_header(methods)
    return response


def _routed_methods(request: web.Request) -> list[str]:
    resource = request.match_info.route.resource
    return [route.method for route in resource] if resource is not None else []


def _api_error(request: web.Request, exc: ApiError) -> web.Response:
    answer = error_response(exc.status, exc.error, exc.details)
    if request.content.exception() is not None:
        # A body that failed to decode cannot be read on, nor skipped: aiohttp's read of the
        # rest (before the next request) would fail again, logged as unhandled. Its end is the
        # end of this connection.
        request.content.feed_eof()
        answer.force_close()
    return answer


def error_middleware(
    max_body_bytes: int,
) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        length = request.content_length
        if length is not None and length > max_body_bytes:
            return error_response(413, f"request body is over the {max_body_bytes}-byte limit")
        try:
            response = await handler(request)
        except ApiError as exc:
            return _api_error(request, exc)
        except web.HTTPRequestEntityTooLarge:
            return error_response(413, f"request body is over the {max_body_bytes}-byte limit")
        except web.HTTPMethodNotAllowed as exc:  # aiohttp's: no route for this method
            return method_not_allowed(request, exc.allowed_methods)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return error_response(exc.status, exc.reason)
        except Exception:
            log.exception("unhandled error in %s %s", request.method, request.path)
            return error_response(500, "internal error")
        if response.status == 405:  # Faust's: a routed method its view lacks (HEAD, no get)
            return method_not_allowed(request, _routed_methods(request))
        return response

    return middleware
