"""PUSH channels against real local servers: Google OAuth2 (JWT bearer) + FCM v1, and a webhook."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.channels.base import DeliveryError, check_device_token
from app.channels.fcm import FcmChannel, ServiceAccount
from app.channels.webhook import WebhookChannel
from tests.fakes.google import GoogleFake, fcm_error
from tests.fakes.notifications import fast_policy, notification
from tests.fakes.server import HANG, Reply
from tests.fakes.webhook import WebhookFake

DEVICE = "dQw4w9WgXcQ:APA91bH-example_device_token"


@pytest.fixture
def google() -> Iterator[GoogleFake]:
    with GoogleFake(project_id="otp-demo") as fake:
        yield fake


def fcm_channel(google: GoogleFake, key_file: Path, **overrides) -> FcmChannel:
    options = {
        "project_id": google.project_id,
        "account": ServiceAccount.load(str(key_file)),
        "base_url": google.url,
        "policy": fast_policy(),
        **overrides,
    }
    return FcmChannel(**options)


def push(recipient: str = DEVICE, **kw):
    return notification("PUSH", recipient, subject="Your code", body="Code 314159", **kw)


@pytest.mark.parametrize(
    ("token", "ok"),
    [
        (DEVICE, True),
        ("x" * 4096, True),
        ("x" * 4097, False),
        ("", False),
        ("abc def", False),
        ("abc\tdef", False),
        ("abc\x00def", False),
        ("abc\u200bdef", False),  # zero-width space: not printable
    ],
)
def test_device_token(token, ok):
    assert (check_device_token(token) is None) is ok


async def test_fcm_delivers_and_caches_the_token(google: GoogleFake, tmp_path: Path):
    channel = fcm_channel(google, google.service_account_file(tmp_path))
    try:
        for i in range(3):
            await channel.send(push(f"{DEVICE}-{i}"))
    finally:
        await channel.close()
    assert [m["token"] for m in google.messages] == [f"{DEVICE}-{i}" for i in range(3)]
    assert (
        google.messages[0]["title"] == "Your code" and google.messages[0]["body"] == "Code 314159"
    )
    assert google.token_requests == 1
    [claims] = google.assertions
    assert claims["aud"] == google.token_url
    assert claims["scope"] == "https://www.googleapis.com/auth/firebase.messaging"
    assert claims["exp"] - claims["iat"] == 3600
    send = google.seen("/messages:send")[0]
    assert send.path == "/v1/projects/otp-demo/messages:send"
    assert send.headers["Authorization"].startswith("Bearer ya29.fake-")
    assert send.json() == {
        "message": {
            "token": f"{DEVICE}-0",
            "notification": {"title": "Your code", "body": "Code 314159"},
        }
    }


async def test_fcm_without_subject_sends_no_title(google: GoogleFake, tmp_path: Path):
    channel = fcm_channel(google, google.service_account_file(tmp_path))
    try:
        await channel.send(notification("PUSH", DEVICE, subject=None, body="Code 1"))
    finally:
        await channel.close()
    assert google.seen("/messages:send")[0].json()["message"]["notification"] == {"body": "Code 1"}


async def test_fcm_refreshes_the_token_once_on_401(google: GoogleFake, tmp_path: Path):
    channel = fcm_channel(google, google.service_account_file(tmp_path))
    try:
        await channel.send(push())
        google.revoke_tokens()
        await channel.send(push())
    finally:
        await channel.close()
    assert google.token_requests == 2
    assert len(google.seen("/messages:send")) == 3  # ok, 401, ok with the new token
    assert len(google.messages) == 2


async def test_fcm_persistent_401_is_final(google: GoogleFake, tmp_path: Path):
    google.send_script.then(
        fcm_error(401, "UNAUTHENTICATED", "bad"), fcm_error(401, "UNAUTHENTICATED", "bad")
    )
    channel = fcm_channel(google, google.service_account_file(tmp_path))
    try:
        with pytest.raises(DeliveryError) as err:
            await channel.send(push())
    finally:
        await channel.close()
    assert str(err.value) == "fcm delivery failed: HTTP 401 (UNAUTHENTICATED)"
    assert len(google.seen("/messages:send")) == 2 and google.token_requests == 2


async def test_fcm_token_refreshed_shortly_before_expiry(tmp_path: Path):
    with GoogleFake(expires_in=2) as google:
        channel = fcm_channel(google, google.service_account_file(tmp_path))
        try:
            await channel.send(push())
            await channel.send(push())
            assert google.token_requests == 1
            await asyncio.sleep(1.1)  # past expires_in minus the refresh margin (half of 2s)
            await channel.send(push())
        finally:
            await channel.close()
        assert google.token_requests == 2 and len(google.messages) == 3
        assert len(google.seen("/messages:send")) == 3  # refreshed before, not after, a 401


async def test_fcm_concurrent_sends_share_one_token_request(google: GoogleFake, tmp_path: Path):
    channel = fcm_channel(google, google.service_account_file(tmp_path))
    try:
        await asyncio.gather(*(channel.send(push(f"{DEVICE}{i}")) for i in range(8)))
    finally:
        await channel.close()
    assert google.token_requests == 1 and len(google.messages) == 8


async def test_fcm_503_twice_then_delivered_once(google: GoogleFake, tmp_path: Path):
    unavailable = Reply(503, {"error": {"code": 503, "status": "UNAVAILABLE", "message": "x"}})
    google.send_script.then(unavailable, unavailable)
    channel = fcm_channel(google, google.service_account_file(tmp_path))
    try:
        await channel.send(push())
    finally:
        await channel.close()
    assert len(google.seen("/messages:send")) == 3 and len(google.messages) == 1
    assert google.token_requests == 1


async def test_fcm_503_every_time_names_the_attempts(google: GoogleFake, tmp_path: Path):
    google.send_script.then(*[Reply(503, b"")] * 10)
    channel = fcm_channel(google, google.service_account_file(tmp_path))
    channel.delivery.policy = fast_policy(max_attempts=3)
    try:
        with pytest.raises(DeliveryError) as err:
            await channel.send(push())
    finally:
        await channel.close()
    assert str(err.value) == "fcm delivery failed: HTTP 503 after 3 attempts"


async def test_fcm_400_is_final(google: GoogleFake, tmp_path: Path):
    google.send_script.then(
        fcm_error(400, "INVALID_ARGUMENT", "The registration token is not valid")
    )
    channel = fcm_channel(google, google.service_account_file(tmp_path))
    try:
        with pytest.raises(DeliveryError) as err:
            await channel.send(push())
    finally:
        await channel.close()
    assert str(err.value) == ("fcm delivery failed: HTTP 400 (INVALID_ARGUMENT)")
    assert len(google.seen("/messages:send")) == 1


async def test_fcm_unregistered_device_is_final(google: GoogleFake, tmp_path: Path):
    channel = fcm_channel(google, google.service_account_file(tmp_path))
    try:
        with pytest.raises(DeliveryError) as err:
            await channel.send(push("unregistered-device-1"))
    finally:
        await channel.close()
    assert str(err.value) == ("fcm delivery failed: HTTP 404 (UNREGISTERED)")
    assert len(google.seen("/messages:send")) == 1


async def test_fcm_429_retry_after_is_honoured(google: GoogleFake, tmp_path: Path):
    google.send_script.then(
        Reply(429, {"error": {"status": "RESOURCE_EXHAUSTED"}}, {"Retry-After": "1"})
    )
    channel = fcm_channel(google, google.service_account_file(tmp_path))
    try:
        await channel.send(push())
    finally:
        await channel.close()
    first, second = google.seen("/messages:send")
    assert second.at - first.at >= 1.0 and len(google.messages) == 1


async def test_fcm_hanging_is_bounded_by_the_delivery_timeout(google: GoogleFake, tmp_path: Path):
    google.send_script.then(*[HANG] * 5)
    channel = fcm_channel(google, google.service_account_file(tmp_path), policy=fast_policy(1.5))
    started = time.monotonic()
    try:
        with pytest.raises(DeliveryError) as err:
            await channel.send(push())
    finally:
        await channel.close()
    assert time.monotonic() - started < 1.5 + 0.5
    assert str(err.value).startswith("fcm delivery failed: timeout after ")


async def test_fcm_token_endpoint_5xx_is_retried(google: GoogleFake, tmp_path: Path):
    google.token_script.then(Reply(500, {"error": "internal_failure"}))
    channel = fcm_channel(google, google.service_account_file(tmp_path))
    try:
        await channel.send(push())
    finally:
        await channel.close()
    assert google.token_requests == 2 and len(google.messages) == 1


async def test_fcm_wrong_key_is_refused_by_the_token_endpoint(google: GoogleFake, tmp_path: Path):
    key_file = google.service_account_file(tmp_path)
    # Same account, another key: the signature no longer verifies against the registered one.
    other = google.service_account_file(tmp_path / "other")
    data = json.loads(key_file.read_text())
    data["private_key"] = json.loads(other.read_text())["private_key"]
    key_file.write_text(json.dumps(data))
    channel = fcm_channel(google, key_file)
    try:
        with pytest.raises(DeliveryError) as err:
            await channel.send(push())
    finally:
        await channel.close()
    assert str(err.value) == ("fcm delivery failed: token endpoint HTTP 400 (invalid_grant)")
    assert google.token_requests == 1 and not google.seen("/messages:send")
    assert "PRIVATE KEY" not in str(err.value)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (None, "cannot read"),
        ("not json", "not valid JSON"),
        ("[]", "not a JSON service-account key file"),
        ('{"private_key": "x"}', "has no client_email"),
        ('{"client_email": "a@b"}', "has no private_key"),
        (
            '{"client_email": "a@b", "private_key": "-----BEGIN PRIVATE KEY-----\\nAAAA\\n-----END PRIVATE KEY-----\\n"}',
            "not an unencrypted PEM key",
        ),
        ('{"client_email": "a@b", "private_key": "k", "token_uri": 5}', "token_uri"),
    ],
)
def test_service_account_errors_never_show_the_key(tmp_path: Path, content, words):
    path = tmp_path / "key.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError) as err:
        ServiceAccount.load(str(path))
    assert words in str(err.value)
    assert "AAAA" not in str(err.value) and "BEGIN" not in str(err.value)


# -- webhook ------------------------------------------------------------------------------------


async def test_push_webhook_posts_title_and_body():
    with WebhookFake(required_headers={"Authorization": "Bearer hook-secret"}) as hook:
        channel = WebhookChannel(
            "PUSH",
            url=hook.hook_url,
            headers=(("Authorization", "Bearer hook-secret"),),
            policy=fast_policy(),
        )
        try:
            await channel.send(push(process_instance_id="pi-9"))
            hook.script.then(Reply(503, b""))
            await channel.send(push())
        finally:
            await channel.close()
        assert hook.messages[0] == {
            "to": DEVICE,
            "title": "Your code",
            "body": "Code 314159",
            "templateName": "otpPush",
            "processInstanceId": "pi-9",
        }
        assert len(hook.messages) == 2 and len(hook.requests) == 3
    assert channel.check_recipient("has space") is not None
    assert channel.check_recipient(DEVICE) is None
