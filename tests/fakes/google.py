"""Google's OAuth 2.0 token endpoint (JWT-bearer grant) and the FCM HTTP v1 send endpoint.

``POST /token`` takes ``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`` and an
``assertion``: a JWT whose RS256 signature is verified against the public key of the service
account the test registered (:meth:`GoogleFake.service_account_file` generates the key pair and
writes the key file), whose ``iss`` is that account, ``aud`` this endpoint, ``scope`` includes
firebase.messaging, ``iat`` is now-ish and ``exp`` at most an hour later. It answers
``{access_token, expires_in, token_type: "Bearer"}``, or ``400 {error: invalid_grant}``.

``POST /v1/projects/{project}/messages:send`` needs ``Authorization: Bearer`` with a token
issued here and not expired or revoked (else ``401 UNAUTHENTICATED``), the right project
(``404``), a JSON ``{"message": {"token": ..., "notification": {...}}}`` (else ``400
INVALID_ARGUMENT``). Device tokens starting with ``unregistered`` answer ``404 UNREGISTERED``,
as FCM does for an app that was uninstalled. Accepted messages are kept in ``messages``.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from tests.fakes.server import FakeServer, Reply, Script

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def _unb64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def fcm_error(status: int, state: str, message: str, error_code: str | None = None) -> Reply:
    """FCM's error shape, as a :class:`Reply` (scriptable, or ``.response()`` in a handler)."""
    error: dict[str, Any] = {"code": status, "message": message, "status": state}
    if error_code:
        error["details"] = [
            {
                "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                "errorCode": error_code,
            }
        ]
    return Reply(status, {"error": error})


def oauth_error(error: str, description: str, status: int = 400) -> web.Response:
    return web.json_response({"error": error, "error_description": description}, status=status)


class GoogleFake(FakeServer):
    def __init__(self, project_id: str = "demo-project", expires_in: int = 3599) -> None:
        super().__init__()
        self.project_id = project_id
        self.expires_in = expires_in
        self.token_script = Script()
        self.send_script = Script()
        self.accounts: dict[str, rsa.RSAPublicKey] = {}
        self.tokens: dict[str, float] = {}  # access token -> expiry (time.time())
        self.assertions: list[dict[str, Any]] = []
        self.messages: list[dict[str, Any]] = []

    @property
    def token_url(self) -> str:
        return f"{self.url}/token"

    def setup(self, app: web.Application) -> None:
        app.router.add_post("/token", self.token)
        app.router.add_post("/v1/projects/{project}/messages:send", self.send)

    # -- test helpers ------------------------------------------------------------------------
    def service_account_file(self, directory: Path, *, email: str | None = None) -> Path:
        """Generate an RSA key, register its public half, write a Google-style key file."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        email = email or f"otp-{secrets.token_hex(4)}@{self.project_id}.iam.gserviceaccount.com"
        with self.lock:
            self.accounts[email] = key.public_key()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        data = {
            "type": "service_account",
            "project_id": self.project_id,
            "private_key_id": secrets.token_hex(20),
            "private_key": pem,
            "client_email": email,
            "client_id": str(secrets.randbelow(10**20)),
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_url,
        }
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{email.split('@')[0]}.json"
        path.write_text(json.dumps(data, indent=2))
        return path

    def revoke_tokens(self) -> None:
        with self.lock:
            self.tokens.clear()

    def to(self, device_token: str) -> list[dict[str, Any]]:
        with self.lock:
            return [m for m in self.messages if m["token"] == device_token]

    @property
    def token_requests(self) -> int:
        return len(self.seen("/token"))

    # -- OAuth2 token endpoint ---------------------------------------------------------------
    def _verify(self, assertion: str) -> dict[str, Any] | str:
        """The JWT's claims, or why it is refused."""
        try:
            head_b64, claims_b64, sig_b64 = assertion.split(".")
            header = json.loads(_unb64(head_b64))
            claims = json.loads(_unb64(claims_b64))
            signature = _unb64(sig_b64)
        except ValueError:
            return "Invalid JWT: malformed"
        if header.get("alg") != "RS256":
            return "Invalid JWT: alg must be RS256"
        with self.lock:
            public_key = self.accounts.get(claims.get("iss"))
        if public_key is None:
            return "Invalid JWT: unknown issuer"
        try:
            public_key.verify(
                signature, f"{head_b64}.{claims_b64}".encode(), padding.PKCS1v15(), hashes.SHA256()
            )
        except InvalidSignature:
            return "Invalid JWT Signature."
        if claims.get("aud") != self.token_url:
            return "Invalid JWT: Failed audience check."
        if SCOPE not in str(claims.get("scope", "")).split():
            return "Invalid JWT: scope must include firebase.messaging"
        now = time.time()
        iat, exp = claims.get("iat"), claims.get("exp")
        if not isinstance(iat, int) or not isinstance(exp, int):
            return "Invalid JWT: iat and exp must be integers"
        if abs(iat - now) > 300:
            return "Invalid JWT: Token must be a short-lived token and in a reasonable timeframe."
        if not 0 < exp - iat <= 3600 or exp < now:
            return "Invalid JWT: Token must be a short-lived token (60 minutes)"
        return claims

    async def token(self, request: web.Request) -> web.Response:
        seen = await self.record(request)
        scripted = await self.scripted(self.token_script)
        if scripted is not None:
            return scripted
        if seen.content_type != "application/x-www-form-urlencoded":
            return oauth_error("invalid_request", "form-encoded body required")
        form = {k: v[-1] for k, v in parse_qs(seen.body.decode()).items()}
        if form.get("grant_type") != GRANT:
            return oauth_error("unsupported_grant_type", "Invalid grant_type")
        claims = self._verify(form.get("assertion", ""))
        if isinstance(claims, str):
            return oauth_error("invalid_grant", claims)
        access_token = "ya29.fake-" + secrets.token_urlsafe(24)
        with self.lock:
            self.tokens[access_token] = time.time() + self.expires_in
            self.assertions.append(claims)
        return web.json_response(
            {"access_token": access_token, "expires_in": self.expires_in, "token_type": "Bearer"}
        )

    # -- FCM v1 send --------------------------------------------------------------------------
    async def send(self, request: web.Request) -> web.Response:
        seen = await self.record(request)
        scripted = await self.scripted(self.send_script)
        if scripted is not None:
            return scripted
        auth = request.headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else ""
        with self.lock:
            expiry = self.tokens.get(token)
        if expiry is None or expiry < time.time():
            return fcm_error(
                401,
                "UNAUTHENTICATED",
                "Request had invalid authentication credentials. Expected OAuth 2 access token.",
            ).response()
        if request.match_info["project"] != self.project_id:
            return fcm_error(404, "NOT_FOUND", "Requested entity was not found.").response()
        if seen.content_type != "application/json":
            return fcm_error(
                400, "INVALID_ARGUMENT", "Content-Type must be application/json"
            ).response()
        try:
            body = seen.json()
        except ValueError:
            return fcm_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.").response()
        message = body.get("message") if isinstance(body, dict) else None
        if not isinstance(message, dict) or set(body) != {"message"}:
            return fcm_error(
                400, "INVALID_ARGUMENT", "Invalid JSON payload: 'message' required."
            ).response()
        targets = [k for k in ("token", "topic", "condition") if k in message]
        device = message.get("token")
        if targets != ["token"] or not isinstance(device, str) or not device:
            return fcm_error(
                400, "INVALID_ARGUMENT", "Exactly one target (token) is required."
            ).response()
        shown = message.get("notification", {})
        if not isinstance(shown, dict) or set(shown) - {"title", "body", "image"}:
            return fcm_error(400, "INVALID_ARGUMENT", "Invalid notification payload.").response()
        if not all(isinstance(v, str) for v in shown.values()):
            return fcm_error(
                400, "INVALID_ARGUMENT", "notification fields must be strings."
            ).response()
        if device.startswith("unregistered"):
            return fcm_error(
                404, "NOT_FOUND", "Requested entity was not found.", "UNREGISTERED"
            ).response()
        name = f"projects/{self.project_id}/messages/0:{secrets.token_hex(8)}"
        with self.lock:
            self.messages.append({"name": name, "token": device, **shown})
        return web.json_response({"name": name})
