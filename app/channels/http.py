"""The HTTP side of the HTTP channels: one reused ``aiohttp`` session per provider.

The session (and its connection pool) is created lazily, inside the running event loop, on the
first send, kept for every later one and closed by ``close()``. Every failure becomes a
:class:`DeliveryError` that names the provider and the HTTP status or the kind of network error;
never a URL (webhook URLs may carry tokens), a header or a credential.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy

from app import codec
from app.channels.base import DeliveryError, redact
from app.channels.retry import parse_retry_after

# Error bodies are read for a short diagnosis only: a provider answering megabytes is cut off.
_MAX_BODY = 64 * 1024
_MAX_DETAIL = 160
USER_AGENT = "faust-otp"


@dataclass(frozen=True)
class Answer:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        """The body as JSON, or None when it is not JSON."""
        try:
            return codec.loads(self.body) if self.body else None
        except ValueError:
            return None

    def field(self, name: str) -> str | None:
        """A short string field of a JSON object body (a provider's message id), else None."""
        body = self.json()
        value = body.get(name) if isinstance(body, dict) else None
        return value if isinstance(value, str) and 0 < len(value) <= 200 else None


def is_transient_status(status: int) -> bool:
    """HTTP statuses worth another try: timeouts, throttling and server-side failures."""
    return status in (408, 425, 429) or status >= 500


class HttpClient:
    """One provider's session. ``post`` is safe to call concurrently."""

    def __init__(
        self, provider: str, *, max_connections: int, secrets: tuple[str, ...] = ()
    ) -> None:
        self.provider = provider
        self.secrets = secrets
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections),
                headers={"User-Agent": USER_AGENT},
            )
        return self._session

    async def post(
        self,
        url: str,
        *,
        timeout: float,
        data: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        """POST and read the answer (any status); network failures raise DeliveryError."""
        session = self._get_session()
        try:
            async with session.post(
                url,
                data=data,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as resp:
                body = await resp.content.read(_MAX_BODY)
                return Answer(resp.status, resp.headers, body)
        except aiohttp.ClientConnectorCertificateError:
            raise DeliveryError(self.provider, "TLS certificate verification failed") from None
        except ssl.SSLCertVerificationError:
            raise DeliveryError(self.provider, "TLS certificate verification failed") from None
        except TimeoutError:
            raise DeliveryError(self.provider, "timeout", transient=True) from None
        except aiohttp.ClientConnectorError as exc:
            reason = type(exc.os_error).__name__ if exc.os_error else type(exc).__name__
            raise DeliveryError(
                self.provider, f"cannot connect ({reason})", transient=True
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise DeliveryError(
                self.provider, f"connection failed ({type(exc).__name__})", transient=True
            ) from None

    def error(
        self, answer: Answer, detail: str | None = None, *, prefix: str = ""
    ) -> DeliveryError:
        """The DeliveryError for a non-2xx answer: transient for 408/425/429/5xx."""
        transient = is_transient_status(answer.status)
        status = f"{prefix}HTTP {answer.status}"
        if detail:
            status += f" ({one_line(redact(detail, self.secrets))})"
        retry_after = parse_retry_after(answer.headers.get("Retry-After")) if transient else None
        return DeliveryError(self.provider, status, transient=transient, retry_after=retry_after)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def one_line(text: str) -> str:
    """Provider text, one line, bounded: enough to diagnose, never a dump into the reply."""
    line = " ".join(str(text).split())
    return line if len(line) <= _MAX_DETAIL else line[: _MAX_DETAIL - 3] + "..."


def describe(answer: Answer, pick: Callable[[Any], str | None]) -> str | None:
    """``pick(json_body)`` guarded: a provider's malformed error body never raises here."""
    try:
        return pick(answer.json())
    except (AttributeError, KeyError, TypeError, IndexError):
        return None
