"""The URL's part of a request, checked before any view reads it: its query names only the
parameters its operation lists (in the OpenAPI document, their one declaration), each once,
and the path and query are UTF-8 once percent-decoded.

A view reads the parameters it knows with ``request.query.get``, which cannot tell an absent
parameter from a misspelt one, nor see a second value: ``PUT ?Draft=true`` published instead
of saving a draft, ``DELETE ?lang=fr`` deleted the default language's template, and
``?draft=false&draft=true`` saved what its first value said. An undecodable byte became U+FFFD
in the query and stayed ``%FF`` in the path, so two different URLs named one identifier.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import unquote_to_bytes

from aiohttp import web
from multidict import MultiMapping

from web.errors import ApiError
from web.openapi.base import Operation

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def shape(path: str) -> str:
    """A route with its parameters unnamed (``/api/otp/{client_id}`` -> ``/api/otp/{}``)."""
    return re.sub(r"\{[^}]+\}", "{}", path)


def query_names(operations: Iterable[Operation]) -> dict[tuple[str, str], frozenset[str]]:
    """Per (route shape, method): the query parameters the operation lists."""
    return {
        (shape(op.path), op.method.upper()): frozenset(
            p["name"] for p in op.parameters if p["in"] == "query"
        )
        for op in operations
    }


def check_url(
    raw_path: str, raw_query: str, query: MultiMapping[str], names: frozenset[str] | None
) -> None:
    """Raise :class:`ApiError` (400, naming the part) for the first problem of a request's URL
    (``raw_*``: still percent-encoded); ``names`` is None for a route the document does not
    describe (its query is not checked)."""
    if not _utf8(raw_path):
        raise ApiError(
            400, "invalid path", [{"field": "path", "message": "is not UTF-8 once percent-decoded"}]
        )
    if not raw_query:
        return
    if not _utf8(raw_query):
        raise ApiError(
            400,
            "invalid query string",
            [{"field": "query", "message": "is not UTF-8 once percent-decoded"}],
        )
    if names is None:
        return
    seen: set[str] = set()
    for name, _ in query.items():  # with repeats, unlike iterating the names
        if name not in names:
            listed = ", ".join(sorted(names)) if names else "none"
            raise ApiError(
                400,
                f"unknown query parameter '{name[:100]}'",
                [{"field": name[:100], "message": f"is not a parameter here (listed: {listed})"}],
            )
        if name in seen:
            raise ApiError(
                400,
                f"query parameter '{name}' given more than once",
                [{"field": name, "message": "must be given at most once"}],
            )
        seen.add(name)


def _utf8(text: str) -> bool:
    try:
        unquote_to_bytes(text).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def url_middleware(
    operations: Iterable[Operation],
) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """Checks every routed request's URL (:func:`check_url`) before its view runs."""
    names = query_names(operations)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        if resource is not None:
            method = "GET" if request.method == "HEAD" else request.method
            listed = names.get((shape(resource.canonical), method))
            url = request.rel_url
            check_url(url.raw_path, url.raw_query_string, request.query, listed)
        return await handler(request)

    return middleware
