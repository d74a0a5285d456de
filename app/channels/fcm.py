"""PUSH through Firebase Cloud Messaging, HTTP v1 API (``PUSH_PROVIDER=fcm``).

``POST {FCM_BASE_URL}/v1/projects/{FCM_PROJECT_ID}/messages:send`` with
``{"message": {"token": <device token>, "notification": {"title", "body"}}}`` and
``Authorization: Bearer <access token>``.

The access token comes from a Google service-account key file (``FCM_CREDENTIALS_FILE``) by
the OAuth 2.0 JWT-bearer grant (RFC 7523): a JWT signed RS256 with the key's ``private_key``
(claims ``iss`` = ``client_email``, ``scope`` = firebase.messaging, ``aud`` = the key's
``token_uri``, ``iat``, ``exp`` = ``iat`` + 3600) is posted to the token endpoint, which answers
``{access_token, expires_in, token_type}``. The token is cached and reused until shortly before
it expires; an FCM ``401`` drops it and the send is tried once more with a fresh one. The
private key and tokens never appear in logs or errors.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from app import codec
from app.channels.base import DeliveryError, Notification, check_device_token, plain_text
from app.channels.http import HttpClient, describe
from app.channels.retry import Delivery, RetryPolicy

PROVIDER = "fcm"
DEFAULT_TOKEN_URL = "https://oauth2.googleapis.com/token"
SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_LIFETIME = 3600
# Refresh this long before the token expires (or at half its life, for short-lived tokens).
REFRESH_MARGIN_SECONDS = 60.0


@dataclass(frozen=True)
class ServiceAccount:
    """The parts of a Google service-account key file the token grant needs."""

    client_email: str
    private_key: rsa.RSAPrivateKey = field(repr=False)
    token_uri: str | None
    private_key_id: str | None = None

    @classmethod
    def load(cls, path: str) -> ServiceAccount:
        """Read and check the key file; ``ValueError`` says what is wrong, never the key."""
        try:
            with open(path, encoding="utf-8") as f:
                raw = f.read()
        except OSError as exc:
            raise ValueError(
                f"cannot read {path!r} ({exc.strerror or type(exc).__name__})"
            ) from None
        except UnicodeDecodeError:
            raise ValueError(f"{path!r} is not a JSON service-account key file") from None
        try:
            data = json.loads(raw)
        except ValueError:
            raise ValueError(f"{path!r} is not valid JSON") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path!r} is not a JSON service-account key file")
        for key in ("client_email", "private_key"):
            if not isinstance(data.get(key), str) or not data[key].strip():
                raise ValueError(f"{path!r} has no {key}")
        token_uri = data.get("token_uri")
        if token_uri is not None and (
            not isinstance(token_uri, str) or not token_uri.startswith(("https://", "http://"))
        ):
            raise ValueError(f"{path!r} has a token_uri that is not an http(s) URL")
        try:
            key = serialization.load_pem_private_key(data["private_key"].encode(), password=None)
        except (ValueError, TypeError):
            raise ValueError(f"{path!r}: private_key is not an unencrypted PEM key") from None
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"{path!r}: private_key is not an RSA key")
        key_id = data.get("private_key_id")
        return cls(
            client_email=data["client_email"].strip(),
            private_key=key,
            token_uri=token_uri or None,
            private_key_id=key_id if isinstance(key_id, str) and key_id else None,
        )


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def make_assertion(
    account: ServiceAccount, audience: str, *, now: float | None = None, scope: str = SCOPE
) -> str:
    """The signed JWT (RS256) the token endpoint exchanges for an access token."""
    iat = int(time.time() if now is None else now)
    header: dict[str, Any] = {"alg": "RS256", "typ": "JWT"}
    if account.private_key_id:
        header["kid"] = account.private_key_id
    claims = {
        "iss": account.client_email,
        "scope": scope,
        "aud": audience,
        "iat": iat,
        "exp": iat + ASSERTION_LIFETIME,
    }
    signing_input = f"{b64url(codec.dumps(header))}.{b64url(codec.dumps(claims))}".encode()
    signature = account.private_key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return f"{signing_input.decode()}.{b64url(signature)}"


def _oauth_detail(body: Any) -> str | None:
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    if isinstance(error, dict):  # some Google endpoints answer in the API error shape
        return _fcm_detail(body)
    return _code(error)


def _fcm_detail(body: Any) -> str | None:
    """``UNREGISTERED`` from Google's API error shape: the code, not the message, which a
    provider may write from what it was sent (a notification's title holds the code)."""
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        return None
    error = body["error"]
    code = None
    for detail in error.get("details") or ():
        if isinstance(detail, dict) and detail.get("errorCode"):
            code = detail["errorCode"]
            break
    return _code(code or error.get("status"))


def _code(value: Any) -> str | None:
    """An error code as Google writes them (``UNREGISTERED``, ``invalid_grant``), or None."""
    if isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", value):
        return value
    return None


class AccessTokens:
    """OAuth2 access tokens for one service account, cached until shortly before expiry."""

    def __init__(self, account: ServiceAccount, *, token_url: str | None, http: HttpClient) -> None:
        self.account = account
        self.audience = account.token_uri or DEFAULT_TOKEN_URL
        self.token_url = token_url or self.audience
        self.http = http
        self.requests = 0
        self._token: str | None = None
        self._refresh_at = 0.0
        self._lock = asyncio.Lock()

    def _cached(self, stale: str | None) -> str | None:
        if self._token is None or self._token == stale:
            return None
        if time.monotonic() >= self._refresh_at:
            return None
        return self._token

    async def get(self, timeout: float, *, stale: str | None = None) -> str:
        """A valid access token; ``stale`` is one the API refused, never returned again."""
        token = self._cached(stale)
        if token is not None:
            return token
        async with self._lock:  # one request for a fresh token, however many sends wait
            token = self._cached(stale)
            if token is not None:
                return token
            return await self._fetch(timeout)

    async def _fetch(self, timeout: float) -> str:
        self.requests += 1
        form = {"grant_type": GRANT_TYPE, "assertion": make_assertion(self.account, self.audience)}
        answer = await self.http.post(self.token_url, data=form, timeout=timeout)
        if not answer.ok:
            raise self.http.error(answer, describe(answer, _oauth_detail), prefix="token endpoint ")
        body = answer.json()
        token = body.get("access_token") if isinstance(body, dict) else None
        expires_in = body.get("expires_in", 3600) if isinstance(body, dict) else None
        if not isinstance(token, str) or not token or not isinstance(expires_in, int | float):
            raise DeliveryError(
                PROVIDER, "token endpoint answered without access_token", transient=True
            )
        margin = min(REFRESH_MARGIN_SECONDS, expires_in / 2)
        self._token = token
        self._refresh_at = time.monotonic() + expires_in - margin
        return token


class FcmChannel:
    """The PUSH channel over FCM HTTP v1. ``send`` is safe to call concurrently."""

    name = "PUSH"
    provider = PROVIDER

    def __init__(
        self,
        *,
        project_id: str,
        account: ServiceAccount,
        base_url: str,
        token_url: str | None = None,
        policy: RetryPolicy | None = None,
        max_concurrency: int = 16,
    ) -> None:
        self._url = f"{base_url.rstrip('/')}/v1/projects/{project_id}/messages:send"
        self.http = HttpClient(PROVIDER, max_connections=max_concurrency)
        self.tokens = AccessTokens(account, token_url=token_url, http=self.http)
        self.delivery = Delivery(PROVIDER, policy or RetryPolicy(), max_concurrency)

    def check_recipient(self, recipient: str) -> str | None:
        return check_device_token(recipient)

    def message(self, notification: Notification) -> dict[str, Any]:
        shown: dict[str, str] = {"body": plain_text(notification)}
        if notification.subject:
            shown = {"title": notification.subject, **shown}
        return {"message": {"token": notification.recipient, "notification": shown}}

    async def send(self, notification: Notification) -> str | None:
        """Send; FCM's message ``name`` (``projects/.../messages/...``)."""
        data = codec.dumps(self.message(notification))

        async def post(token: str, timeout: float) -> Any:
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            return await self.http.post(self._url, data=data, headers=headers, timeout=timeout)

        async def attempt(timeout: float) -> str | None:
            token = await self.tokens.get(timeout)
            answer = await post(token, timeout)
            if answer.status == 401:  # revoked or expired early: one fresh token, one more try
                token = await self.tokens.get(timeout, stale=token)
                answer = await post(token, timeout)
            if not answer.ok:
                raise self.http.error(answer, describe(answer, _fcm_detail))
            return answer.field("name")

        return await self.delivery.run(attempt)

    async def close(self) -> None:
        await self.http.close()
