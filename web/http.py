"""Small request helpers shared by the views: admit a caller, read a JSON body, read a query."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit
from uuid import uuid4

from aiohttp import web

from app import codec
from app.core import access
from app.core.access import Principal, TokenRegistry
from web.errors import ApiError

T = TypeVar("T")

if TYPE_CHECKING:
    from app.main import Context
    from app.settings import Settings
    from tables.template_cache import TemplateCache


def authorize(request: web.Request, registry: TokenRegistry, enabled: bool) -> Principal:
    """The caller behind the bearer token (compared in constant time, never echoed or logged)."""
    if not enabled:
        return access.UNAUTHENTICATED
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise ApiError(
            401,
            "missing bearer token",
            [{"field": "Authorization", "message": "expected 'Bearer <token>'"}],
        )
    principal = registry.authenticate(given.strip())
    if principal is None:
        raise ApiError(
            401,
            "invalid bearer token",
            [{"field": "Authorization", "message": "token not accepted"}],
        )
    return principal


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def same_origin(request: web.Request) -> bool:
    """Whether a browser (if one sent it) sent ``request`` from this service's own pages.

    The console calls the API with a bearer header, which no other site's page can make a
    browser send without CORS, and this service answers no CORS preflight. But a form on any
    page can still POST to a body-less route (an OTP cancel, a publish), and with
    ``NOTIFY_API_AUTH=disabled`` nothing else would stop it. Browsers say where a request
    comes from (``Sec-Fetch-Site``, or ``Origin`` in older ones); other clients say nothing.
    """
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        return site in ("same-origin", "none")  # "none": typed by the user, a bookmark
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    try:
        return urlsplit(origin).netloc == request.host  # "null" (a sandbox, a file) never is
    except ValueError:  # "http://[::1": not an origin a browser writes
        return False


class Gate:
    """Every API view's first step: who is calling, may they do this, is the worker ready."""

    def __init__(self, settings: Settings, registry: TokenRegistry, cache: TemplateCache) -> None:
        self.settings = settings
        self.registry = registry
        self.cache = cache

    @classmethod
    def of(cls, ctx: Context) -> Gate:
        return cls(ctx.settings, ctx.access, ctx.cache)

    def who(self, request: web.Request) -> Principal:
        return authorize(request, self.registry, self.settings.notify_api_auth == "enabled")

    async def admit(self, request: web.Request, scope: str) -> Principal:
        """The caller if it holds ``scope`` (403 naming the scope otherwise), once this worker's
        read model has caught up: before that, a read could miss a template and a command (a
        template write, an OTP cancel) its answer."""
        if request.method not in SAFE_METHODS and not same_origin(request):
            raise ApiError(
                403,
                "a page of another origin cannot change anything here",
                [{"field": "Origin", "message": "must be this service's own, or absent"}],
            )
        principal = self.who(request)
        if not principal.allows(scope):
            raise ApiError(
                403,
                f"token '{principal.name}' lacks the '{scope}' scope",
                [{"field": "Authorization", "message": f"needs the '{scope}' scope"}],
            )
        if not self.cache.ready.is_set():
            try:
                await asyncio.wait_for(
                    self.cache.ready.wait(), timeout=self.settings.api_write_timeout_seconds
                )
            except TimeoutError:
                raise ApiError(503, "the service is still loading; retry") from None
        return principal


async def ask(
    cache: TemplateCache,
    timeout: float,
    send: Callable[[str], Awaitable[object]],
    unavailable: str,
) -> dict[str, Any]:
    """Send a command under a fresh request id and wait for its answer on the results topic
    (which every worker's read model reads); ``503 unavailable`` if none comes in time."""
    request_id = uuid4().hex
    answer = cache.expect(request_id)
    try:
        await send(request_id)
        return await asyncio.wait_for(answer, timeout=timeout)
    except TimeoutError:
        raise ApiError(503, unavailable) from None
    finally:
        cache.forget(request_id)


# A body that has not arrived by then is a client holding a handler open, not a slow network.
BODY_READ_SECONDS = 10.0


async def within_read_deadline(read: Awaitable[T]) -> T:
    """``read`` (of a request body), or 408 once ``BODY_READ_SECONDS`` have passed; 400 for
    a body that does not decode as its ``Content-Encoding`` says, or that stops mid-way."""
    try:
        return await asyncio.wait_for(read, timeout=BODY_READ_SECONDS)
    except TimeoutError:
        raise ApiError(408, f"request body did not arrive within {BODY_READ_SECONDS:g} s") from None
    except web.RequestPayloadError:
        detail = {"field": "Content-Encoding", "message": "the body does not decode as declared"}
        raise ApiError(400, "request body is malformed", [detail]) from None
    except ConnectionResetError:  # the client left: nobody reads the answer, nothing to log
        raise ApiError(400, "request body was cut off") from None


async def read_json(request: web.Request, max_bytes: int) -> Any:
    """The body as JSON: 415 unless declared JSON, 413 when too large, 400 when malformed."""
    if request.content_type != "application/json":
        raise ApiError(
            415,
            "request body must be JSON",
            [{"field": "Content-Type", "message": "expected application/json"}],
        )
    try:
        # aiohttp enforces client_max_size (set to max_bytes) here, chunked bodies included.
        raw = await within_read_deadline(request.read())
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, f"request body is over the {max_bytes}-byte limit") from None
    if len(raw) > max_bytes:
        raise ApiError(413, f"request body is over the {max_bytes}-byte limit")
    try:
        return codec.loads(raw)
    except codec.JSONDecodeError as exc:
        raise ApiError(
            400, "request body is not valid JSON", [{"field": "$", "message": str(exc)}]
        ) from None


def if_match(request: web.Request) -> list[str] | str | None:
    """``If-Match`` as the template writer takes it: None (absent), ``"*"``, or its strong
    tags (a weak one never matches: RFC 9110 compares strongly here)."""
    values = request.headers.getall("If-Match", [])
    if not values:
        return None
    tags = [tag.strip() for value in values for tag in value.split(",")]
    if "*" in tags:
        return "*"
    return [tag for tag in tags if len(tag) >= 2 and tag[0] == tag[-1] == '"'][:MAX_TAGS]


#: Tags of one If-Match the writer compares (a header is 8 KB at most anyway).
MAX_TAGS = 64


def query_bool(request: web.Request, name: str) -> bool | None:
    raw = request.query.get(name)
    if raw is None:
        return None
    if raw.lower() in ("true", "1", "yes"):
        return True
    if raw.lower() in ("false", "0", "no"):
        return False
    raise ApiError(
        400,
        f"invalid query parameter '{name}'",
        [{"field": name, "message": "must be true or false"}],
    )
