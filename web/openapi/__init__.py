"""The OpenAPI 3.1 document of the HTTP API, served without a token at ``GET /api/openapi.json``.

The document states what the server does, and ``tests/integration/test_openapi_contract.py``
holds it to that (schemathesis, ``--checks all``, against a live worker): every route, every
parameter and body rule JSON Schema can state (built from the same patterns and limits the
views and :mod:`app.core.templates` apply, not copies of them), every status a route answers.

A few rules no JSON Schema states (a template body must compile; a mandatory parameter must be
used by it; preview data must carry the template's mandatory parameters ...) are listed in the
``400`` answer of their operation, in prose and as ``x-beyond-schema``: the patterns of the
refusal's ``details`` field and message. A request the schemas admit may be refused only for
one of those; the contract test fails on any other refusal.

Adding a route: one :class:`~web.openapi.base.Operation` in the list of its module
(:mod:`web.openapi.templates`, :mod:`web.openapi.service`), with the ``scope`` it needs (``401``
and ``403`` come with it) and every status it answers; its schemas in that module's
``schemas``. ``tests/unit/test_openapi_document.py`` fails while a route the app registers is
missing from the document, or the other way round.
"""

from __future__ import annotations

from typing import Any

import faust
from aiohttp import web

from web.errors import json_response
from web.openapi import service, templates
from web.openapi.base import Limits, Operation, limits_of

__all__ = ["Limits", "document", "limits_of", "operations", "register"]


def operations(lim: Limits) -> list[Operation]:
    return [*templates.operations(lim), *service.operations(lim)]


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
            "with drafts, history and export/import; the OTP status of an identifier; the "
            "send log; the service's health. Every /api route but this document and provider "
            "callbacks needs `Authorization: Bearer <token>` (NOTIFY_API_TOKEN, an `admin` "
            "token, or one of NOTIFY_API_TOKENS_FILE) with the scope the operation names "
            "(`admin` has all), unless NOTIFY_API_AUTH=disabled. "
            f"A request body over {lim.max_body_bytes} bytes (API_MAX_BODY_BYTES) is refused "
            "with 413 on any route; a method a path does not have, with 405 and `Allow`; "
            "a query parameter the operation does not list, or one given twice, with 400 "
            "naming it. "
            "Every error is JSON: `Error`.",
        },
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Scopes: read, edit, import, admin (every scope); an "
                    "operation's security names the one it needs.",
                }
            },
            "schemas": {**templates.schemas(lim), **service.schemas(lim)},
        },
    }


def register(ctx: Any) -> None:
    doc = document(limits_of(ctx.settings))

    @ctx.app.page("/api/openapi.json", name="openapi")
    class OpenApi(faust.web.View):
        async def get(self, request: web.Request) -> web.Response:
            return json_response(doc)
