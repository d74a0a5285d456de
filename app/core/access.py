"""Who may call the HTTP API, and what they may do: named tokens with scopes.

Pure (no HTTP): the views ask :class:`TokenRegistry` for the :class:`Principal` behind a bearer
token and check its scopes. The registry keeps SHA-256 digests, never tokens, so a heap dump or
a leaked tokens file does not hand out access; every lookup compares against every digest in
constant time, so the answer's timing says nothing about which token was close.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app import codec

READ, EDIT, IMPORT, ADMIN = "read", "edit", "import", "admin"
SCOPES = (READ, EDIT, IMPORT, ADMIN)
#: The name ``NOTIFY_API_TOKEN`` goes by in the history and the logs.
DEFAULT_TOKEN_NAME = "default"
#: Who changed a template when the API runs without authentication.
ANONYMOUS = "anonymous"
TOKEN_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
MAX_TOKENS = 1000


class AccessConfigError(ValueError):
    """The tokens file cannot be used; the message names the entry and never a digest."""


@dataclass(frozen=True)
class Principal:
    """The caller behind a token: its name (safe to log) and its scopes."""

    name: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return ADMIN in self.scopes or scope in self.scopes

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "scopes": sorted(self.scopes)}


#: The caller when ``NOTIFY_API_AUTH=disabled``: everything is allowed.
UNAUTHENTICATED = Principal(ANONYMOUS, frozenset({ADMIN}))


def digest(token: str) -> bytes:
    # aiohttp decodes headers with surrogateescape: a token of any bytes has a digest.
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


class TokenRegistry:
    """Named tokens by SHA-256 digest."""

    def __init__(self, entries: list[tuple[bytes, Principal]]) -> None:
        self._entries = entries

    def __len__(self) -> int:
        return len(self._entries)

    def authenticate(self, token: str) -> Principal | None:
        """The principal whose digest matches ``token``, comparing against all of them."""
        given = digest(token)
        found: Principal | None = None
        for stored, principal in self._entries:
            if hmac.compare_digest(given, stored) and found is None:
                found = principal
        return found

    @classmethod
    def build(cls, token: str | None, tokens_file: str | None) -> TokenRegistry:
        """``NOTIFY_API_TOKEN`` (one ``admin`` token named ``default``) and the tokens file."""
        entries: list[tuple[bytes, Principal]] = []
        if token:
            entries.append((digest(token), Principal(DEFAULT_TOKEN_NAME, frozenset({ADMIN}))))
        if tokens_file:
            listed = load_tokens_file(Path(tokens_file))
            if token and any(value == entries[0][0] for value, _ in listed):
                raise AccessConfigError(
                    "the tokens file lists NOTIFY_API_TOKEN (which has every scope) under "
                    "another name: use one or the other"
                )
            entries.extend(listed)
        return cls(entries)


def load_tokens_file(path: Path) -> list[tuple[bytes, Principal]]:
    """Read ``{"tokens": [{"name", "sha256", "scopes"}, ...]}``; refuse anything ambiguous."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise AccessConfigError(f"cannot read {path}: {exc.strerror}") from None
    try:
        document = codec.loads(raw)
    except codec.JSONDecodeError:
        raise AccessConfigError(f"{path} is not valid JSON") from None
    tokens = document.get("tokens") if isinstance(document, dict) else None
    if not isinstance(tokens, list) or not tokens:
        raise AccessConfigError(f'{path} must be {{"tokens": [...]}} with at least one token')
    if len(tokens) > MAX_TOKENS:
        raise AccessConfigError(f"{path} has more than {MAX_TOKENS} tokens")
    return parse_tokens(tokens)


def parse_tokens(tokens: list[Any]) -> list[tuple[bytes, Principal]]:
    entries: list[tuple[bytes, Principal]] = []
    names: set[str] = {DEFAULT_TOKEN_NAME, ANONYMOUS}
    digests: set[bytes] = set()
    for i, item in enumerate(tokens):
        where = f"tokens[{i}]"
        if not isinstance(item, dict):
            raise AccessConfigError(f"{where} must be an object {{name, sha256, scopes}}")
        name, hexdigest, scopes = item.get("name"), item.get("sha256"), item.get("scopes")
        if not isinstance(name, str) or not TOKEN_NAME_RE.fullmatch(name):
            raise AccessConfigError(f"{where}.name must be 1-64 characters of A-Z a-z 0-9 _ . @ -")
        if name in names:
            raise AccessConfigError(f"{where}.name '{name}' is used twice (or is reserved)")
        if not isinstance(hexdigest, str) or not SHA256_RE.fullmatch(hexdigest):
            raise AccessConfigError(f"{where}.sha256 must be 64 lowercase hex digits")
        if (
            not isinstance(scopes, list)
            or not scopes
            or not all(isinstance(s, str) and s in SCOPES for s in scopes)
        ):
            raise AccessConfigError(f"{where}.scopes must be a non-empty list of {SCOPES}")
        value = bytes.fromhex(hexdigest)
        if value in digests:
            raise AccessConfigError(f"{where}: the same token is listed twice")
        names.add(name)
        digests.add(value)
        entries.append((value, Principal(name, frozenset(scopes))))
    return entries
