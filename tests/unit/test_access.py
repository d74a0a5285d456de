"""Named, scoped API tokens (``app.core.access``) and the settings that load them."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from app import codec
from app.core import access
from app.settings import ConfigError, Settings


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def tokens_file(tmp_path: Path, tokens: Any) -> Path:
    path = tmp_path / "tokens.json"
    path.write_bytes(codec.dumps({"tokens": tokens}))
    return path


def test_tokens_resolve_to_their_names_and_scopes(tmp_path: Path) -> None:
    path = tokens_file(
        tmp_path,
        [
            {"name": "ci-reader", "sha256": sha("r-token"), "scopes": ["read"]},
            {"name": "importer", "sha256": sha("i-token"), "scopes": ["read", "import"]},
        ],
    )
    registry = access.TokenRegistry.build("admin-token", str(path))
    reader = registry.authenticate("r-token")
    assert reader is not None and reader.name == "ci-reader"
    assert reader.allows("read") and not reader.allows("edit") and not reader.allows("admin")
    importer = registry.authenticate("i-token")
    assert importer is not None and importer.allows("import") and not importer.allows("edit")
    admin = registry.authenticate("admin-token")
    assert admin is not None and admin.name == "default"
    assert all(admin.allows(scope) for scope in access.SCOPES)
    assert registry.authenticate("r-token ") is None
    assert registry.authenticate(sha("r-token")) is None, "a digest is not a token"


def test_the_registry_keeps_no_token() -> None:
    registry = access.TokenRegistry.build("a-very-secret-token", None)
    assert "a-very-secret-token" not in repr(vars(registry))


@pytest.mark.parametrize(
    ("tokens", "says"),
    [
        ([], "at least one token"),
        (["x"], "tokens[0] must be an object"),
        ([{"name": "", "sha256": sha("a"), "scopes": ["read"]}], "tokens[0].name"),
        ([{"name": "default", "sha256": sha("a"), "scopes": ["read"]}], "reserved"),
        ([{"name": "a", "sha256": "abc", "scopes": ["read"]}], "tokens[0].sha256"),
        ([{"name": "a", "sha256": sha("a").upper(), "scopes": ["read"]}], "lowercase"),
        ([{"name": "a", "sha256": sha("a"), "scopes": []}], "tokens[0].scopes"),
        ([{"name": "a", "sha256": sha("a"), "scopes": ["write"]}], "tokens[0].scopes"),
        (
            [
                {"name": "a", "sha256": sha("a"), "scopes": ["read"]},
                {"name": "a", "sha256": sha("b"), "scopes": ["read"]},
            ],
            "used twice",
        ),
        (
            [
                {"name": "a", "sha256": sha("a"), "scopes": ["read"]},
                {"name": "b", "sha256": sha("a"), "scopes": ["edit"]},
            ],
            "listed twice",
        ),
    ],
)
def test_a_bad_tokens_file_refuses_to_start_naming_the_entry(
    tmp_path: Path, tokens: Any, says: str
) -> None:
    path = tokens_file(tmp_path, tokens)
    env = {"OTP_HMAC_SECRET": "s" * 32, "NOTIFY_API_TOKENS_FILE": str(path)}
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert caught.value.variable == "NOTIFY_API_TOKENS_FILE"
    assert says in str(caught.value)
    for item in tokens:
        if isinstance(item, dict):
            assert item["sha256"] not in str(caught.value)


def test_a_missing_or_unreadable_file_is_named(tmp_path: Path) -> None:
    env = {"OTP_HMAC_SECRET": "s" * 32, "NOTIFY_API_TOKENS_FILE": str(tmp_path / "nope.json")}
    with pytest.raises(ConfigError, match="cannot read"):
        Settings.from_env(env)
    (tmp_path / "bad.json").write_text("{")
    env["NOTIFY_API_TOKENS_FILE"] = str(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        Settings.from_env(env)


def test_a_tokens_file_alone_is_enough(tmp_path: Path) -> None:
    path = tokens_file(tmp_path, [{"name": "ops", "sha256": sha("t"), "scopes": ["admin"]}])
    settings = Settings.from_env({"OTP_HMAC_SECRET": "s" * 32, "NOTIFY_API_TOKENS_FILE": str(path)})
    principal = settings.token_registry().authenticate("t")
    assert principal is not None and principal.name == "ops"
    with pytest.raises(ConfigError, match="NOTIFY_API_TOKENS_FILE"):
        Settings.from_env({"OTP_HMAC_SECRET": "s" * 32})


def test_a_token_of_any_bytes_is_refused_not_an_error() -> None:
    registry = access.TokenRegistry.build("admin-token", None)
    assert registry.authenticate(b"\xff\xfe".decode("utf-8", "surrogateescape")) is None


def test_the_admin_token_listed_in_the_file_under_another_name_is_refused(tmp_path: Path) -> None:
    path = tokens_file(tmp_path, [{"name": "ro", "sha256": sha("admin-token"), "scopes": ["read"]}])
    env = {
        "OTP_HMAC_SECRET": "s" * 32,
        "NOTIFY_API_TOKEN": "admin-token",
        "NOTIFY_API_TOKENS_FILE": str(path),
    }
    with pytest.raises(ConfigError, match="one or the other"):
        Settings.from_env(env)
