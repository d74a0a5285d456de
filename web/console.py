"""The template console: a static page at ``/console`` that talks to ``/api`` from the browser.

The worker serves it itself (no CDN, no build step), so an operator who can reach the API can
reach the console, and the console can never drift from the API it was shipped with. The files
under ``web/console/`` are read once at start and served from memory with a content hash as
``ETag``: the set is fixed and small, and reading them per request would put disk I/O on the
event loop that also consumes Kafka.

The page holds no secret and needs no authentication to load: the token a person types is kept
in ``sessionStorage`` by the page and sent as a bearer token to ``/api``, which authorizes every
call. What makes the page safe to serve is its headers: a Content-Security-Policy that allows
only the worker's own script and API (no inline script, no eval, no third-party host), keeps
the mail preview's HTML (``<iframe sandbox srcdoc>``, which inherits this policy) from running
script or loading anything remote, and forbids framing the console (clickjacking);
``nosniff`` and ``no-referrer`` on every asset.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import faust
from aiohttp import web

from web.errors import ApiError

if TYPE_CHECKING:
    from app.main import Context

STATIC_DIR = Path(__file__).resolve().parent / "console"

#: Every directive the page needs and nothing else; ``default-src 'none'`` denies the rest
#: (fonts, media, objects, workers, manifests). Script only from the worker's own files: no
#: inline script, no ``eval``, no event-handler attributes.
#:
#: The mail preview is an ``<iframe sandbox srcdoc>``, and a srcdoc document inherits this
#: policy, so each directive here is also what a previewed mail may do:
#: - ``style-src 'unsafe-inline'``: mails are styled inline (``style=`` and ``<style>``, the only
#:   styling mail clients honour); without it the preview shows every mail unstyled. It costs
#:   the console nothing: the console's own files use no inline style, and it never puts markup
#:   it did not write into its own document (text goes in with ``textContent``), so there is no
#:   injected style to stop; and whatever CSS could do, it could not send anything out, since
#:   images, fonts and connections reach no other host.
#: - ``img-src 'self' data:``: a mail's inline images show; remote ones (logos, tracking
#:   pixels) are not fetched when an operator merely previews (the console says so).
#: - ``frame-src 'none'``: srcdoc is not a fetch, so the preview needs no frame source, and a
#:   link clicked inside the preview cannot load another site into it.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "connect-src 'self'",
        "img-src 'self' data:",
        "frame-src 'none'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'self'",
    )
)

#: Sent with every console response, the page and its assets alike.
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # For browsers older than CSP's frame-ancestors.
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
}

#: The files the console is made of, with their media types; nothing else under the
#: directory is served, so a stray file (an editor's backup, a note) never leaks.
ASSETS = {
    "index.html": "text/html",
    "console.js": "text/javascript",
    "console.css": "text/css",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def load_assets(directory: Path = STATIC_DIR) -> dict[str, Asset]:
    """The console's files, read once; a missing one fails the worker's start, not a request."""
    assets = {}
    for name, content_type in ASSETS.items():
        body = (directory / name).read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        assets[name] = Asset(body, content_type, etag)
    return assets


def respond(request: web.Request, asset: Asset) -> web.Response:
    """The asset, or ``304`` when the browser already holds this version.

    ``no-cache`` rather than a max-age: the file names carry no version, so the browser must
    ask each time (a cheap conditional request) to pick up a new release at once.
    """
    headers = {**SECURITY_HEADERS, "ETag": asset.etag, "Cache-Control": "no-cache"}
    # RFC 9110 13.1.2: "*" matches any version, and the comparison is weak (W/"x" is "x").
    wanted = {
        tag.strip().removeprefix("W/")
        for tag in request.headers.get("If-None-Match", "").split(",")
    }
    if "*" in wanted or asset.etag in wanted:
        return web.Response(status=304, headers=headers)
    return web.Response(
        body=asset.body, content_type=asset.content_type, charset="utf-8", headers=headers
    )


def register(ctx: Context) -> None:
    app, assets = ctx.app, load_assets()

    @app.page("/console", name="console")
    class Console(faust.web.View):
        async def get(self, request: web.Request) -> web.Response:
            return respond(request, assets["index.html"])

    @app.page("/console/{asset}", name="console_asset")
    class ConsoleAsset(faust.web.View):
        async def get(self, request: web.Request, asset: str) -> web.Response:
            found = assets.get(asset)
            if found is None:
                raise ApiError(404, f"no console file '{asset}'")
            return respond(request, found)
