"""A real aiohttp server on loopback, in a thread of its own, with script-able failures.

The server runs its own event loop in a background thread, so the same fake serves an
in-process channel under test (whatever its loop) and a worker subprocess alike. Each endpoint
has a :class:`Script`: queued actions consumed one per request before the normal contract
applies (``Reply(503)`` twice, then the real answer; ``HANG`` never answers until the server
stops). Every request is recorded in ``requests``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from app import codec
from devtools.support import free_port


@dataclass(frozen=True)
class Reply:
    """A scripted answer: status, JSON (or bytes) body, headers."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)

    def response(self) -> web.Response:
        if isinstance(self.body, bytes | str):
            return web.Response(status=self.status, body=self.body, headers=self.headers)
        return web.Response(
            status=self.status,
            body=codec.dumps(self.body if self.body is not None else {}),
            headers={"Content-Type": "application/json", **self.headers},
        )


@dataclass(frozen=True)
class Delay:
    """A scripted pause before the normal answer (a slow, but working, provider)."""

    seconds: float


HANG = "hang"


class Script:
    """Actions queued for one endpoint, consumed in order, one per request."""

    def __init__(self) -> None:
        self._queue: deque[Any] = deque()
        self._lock = threading.Lock()

    def then(self, *actions: Any) -> Script:
        with self._lock:
            self._queue.extend(actions)
        return self

    def next(self) -> Any:
        with self._lock:
            return self._queue.popleft() if self._queue else None

    def clear(self) -> None:
        with self._lock:
            self._queue.clear()


@dataclass(frozen=True)
class Seen:
    """One request as the server received it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    content_type: str
    at: float  # time.monotonic() when the request arrived
    peer: Any  # (host, port) of the client: one port for many requests = a reused connection

    def json(self) -> Any:
        return codec.loads(self.body)


class FakeServer:
    """Subclasses add routes in :meth:`setup`; ``with Fake() as fake:`` starts and stops it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.requests: list[Seen] = []
        self.lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Event | None = None
        self.in_flight = 0
        self.max_in_flight = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def setup(self, app: web.Application) -> None:
        raise NotImplementedError

    # -- helpers for handlers ---------------------------------------------------------------
    async def record(self, request: web.Request) -> Seen:
        body = await request.read()
        seen = Seen(
            request.method,
            request.path,
            dict(request.headers),
            body,
            request.content_type,
            time.monotonic(),
            request.transport.get_extra_info("peername") if request.transport else None,
        )
        with self.lock:
            self.requests.append(seen)
        return seen

    async def scripted(self, script: Script) -> web.Response | None:
        """The scripted answer for this request, or None to apply the normal contract."""
        action = script.next()
        if action is None:
            return None
        if action == HANG:
            assert self._stopping is not None
            await self._stopping.wait()  # never answers; released when the server stops
            raise web.HTTPServiceUnavailable()
        if isinstance(action, Reply):
            return action.response()
        if isinstance(action, Delay):
            await asyncio.sleep(action.seconds)
            return None
        raise AssertionError(f"unknown scripted action {action!r}")

    def seen(self, path_part: str = "") -> list[Seen]:
        with self.lock:
            return [r for r in self.requests if path_part in r.path]

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> FakeServer:
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._serve())
            except BaseException as exc:  # surfaced by start()
                errors.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name=type(self).__name__, daemon=True)
        self._thread.start()
        ready.wait(10)
        if errors:
            raise errors[0]
        return self

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        app = web.Application(middlewares=[self._count_in_flight])
        self.setup(app)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    @web.middleware
    async def _count_in_flight(self, request: web.Request, handler: Any) -> web.StreamResponse:
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await handler(request)
        finally:
            with self.lock:
                self.in_flight -= 1

    async def _cleanup(self) -> None:
        assert self._stopping is not None and self._runner is not None
        self._stopping.set()
        await self._runner.cleanup()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
