"""An HTTP endpoint receiving notifications as JSON, the contract of ``*_PROVIDER=webhook``.

Accepts ``POST /hook`` with a JSON body and answers ``200 {"ok": true}``; if ``required_headers``
is set, a request missing one of them (or with another value) gets ``401``. Every accepted body
is kept in ``messages``, with its headers in ``requests``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tests.fakes.server import FakeServer, Script


class WebhookFake(FakeServer):
    def __init__(self, required_headers: dict[str, str] | None = None) -> None:
        super().__init__()
        self.required_headers = required_headers or {}
        self.script = Script()
        self.messages: list[dict[str, Any]] = []

    @property
    def hook_url(self) -> str:
        return f"{self.url}/hook"

    def setup(self, app: web.Application) -> None:
        app.router.add_post("/hook", self.hook)

    async def hook(self, request: web.Request) -> web.Response:
        seen = await self.record(request)
        scripted = await self.scripted(self.script)
        if scripted is not None:
            return scripted
        for name, value in self.required_headers.items():
            if request.headers.get(name) != value:
                return web.json_response({"error": "unauthorized"}, status=401)
        if seen.content_type != "application/json":
            return web.json_response({"error": "JSON expected"}, status=415)
        try:
            body = seen.json()
        except ValueError:
            return web.json_response({"error": "invalid JSON"}, status=400)
        with self.lock:
            self.messages.append(body)
        return web.json_response({"ok": True})
