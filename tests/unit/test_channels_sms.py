"""SMS channels against real local servers: the Twilio Messages contract and a JSON webhook."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator
from urllib.parse import parse_qs

import pytest

from app.channels.base import DeliveryError, check_phone
from app.channels.twilio import TwilioChannel
from app.channels.webhook import WebhookChannel
from devtools.support import free_port
from tests.fakes.notifications import fast_policy, notification
from tests.fakes.server import HANG, Delay, Reply
from tests.fakes.twilio import TwilioFake
from tests.fakes.webhook import WebhookFake

SLOW_503 = Reply(503, {"code": 20500, "message": "Internal Server Error", "status": 503})


@pytest.fixture
def twilio() -> Iterator[TwilioFake]:
    with TwilioFake() as fake:
        yield fake


def twilio_channel(fake: TwilioFake, **overrides) -> TwilioChannel:
    options = {
        "account_sid": fake.account_sid,
        "auth_token": fake.auth_token,
        "from_number": "+15017122661",
        "base_url": fake.url,
        "policy": fast_policy(),
        **overrides,
    }
    return TwilioChannel(**options)


@pytest.mark.parametrize(
    ("number", "ok"),
    [
        ("+40712345678", True),
        ("+14155552671", True),
        ("+123456789012345", True),  # 15 digits
        ("+1234567", False),  # 7 digits
        ("+1234567890123456", False),  # 16 digits
        ("+0712345678", False),  # country code cannot start with 0
        ("40712345678", False),
        ("+40 712 345 678", False),
        ("+40712345678\n", False),
        ("+4071234567８", False),  # a non-ASCII digit
        ("", False),
    ],
)
def test_e164(number, ok):
    assert (check_phone(number) is None) is ok
    fake_free = TwilioChannel(
        account_sid="AC1", auth_token="t", from_number="+1", base_url="http://127.0.0.1:9"
    )
    assert (fake_free.check_recipient(number) is None) is ok


async def test_twilio_delivers_form_encoded_with_basic_auth(twilio: TwilioFake):
    channel = twilio_channel(twilio)
    try:
        await channel.send(notification(body="OTP 482913"))
        await channel.send(notification(recipient="+40700000001", body="OTP 000111"))
    finally:
        await channel.close()
    [first, second] = twilio.messages
    assert (first["to"], first["from"], first["body"]) == (
        "+40712345678",
        "+15017122661",
        "OTP 482913",
    )
    assert first["status"] == "queued" and first["sid"].startswith("SM")
    assert second["to"] == "+40700000001"
    request = twilio.requests[0]
    assert request.path == f"/2010-04-01/Accounts/{twilio.account_sid}/Messages.json"
    assert request.content_type == "application/x-www-form-urlencoded"
    assert parse_qs(request.body.decode()) == {
        "To": ["+40712345678"],
        "From": ["+15017122661"],
        "Body": ["OTP 482913"],
    }
    user_pass = base64.b64decode(request.headers["Authorization"].removeprefix("Basic "))
    assert user_pass.decode() == f"{twilio.account_sid}:{twilio.auth_token}"
    # One session, one kept-alive connection for both messages.
    assert len({r.peer for r in twilio.requests}) == 1


async def test_twilio_messaging_service_wins_over_from(twilio: TwilioFake):
    channel = twilio_channel(twilio, messaging_service_sid="MG" + "0" * 32)
    try:
        await channel.send(notification())
    finally:
        await channel.close()
    [message] = twilio.messages
    assert message["messaging_service_sid"] == "MG" + "0" * 32 and message["from"] is None
    assert message["status"] == "accepted"


async def test_twilio_html_body_goes_as_its_text_alternative(twilio: TwilioFake):
    channel = twilio_channel(twilio)
    try:
        await channel.send(notification(body="<p>OTP 1</p>", text="OTP 1"))
    finally:
        await channel.close()
    assert twilio.messages[0]["body"] == "OTP 1"


async def test_twilio_503_twice_then_delivered_once(twilio: TwilioFake):
    twilio.script.then(SLOW_503, SLOW_503)
    channel = twilio_channel(twilio)
    try:
        await channel.send(notification())
    finally:
        await channel.close()
    assert len(twilio.requests) == 3
    assert len(twilio.messages) == 1


async def test_twilio_400_is_final_with_twilio_code(twilio: TwilioFake):
    channel = twilio_channel(twilio)
    try:
        with pytest.raises(DeliveryError) as err:
            await channel.send(notification(recipient="+15550001111"))
    finally:
        await channel.close()
    assert str(err.value) == "twilio delivery failed: HTTP 400 (21211)"
    assert not err.value.transient
    assert len(twilio.requests) == 1 and twilio.messages == []


async def test_twilio_wrong_token_is_final_and_the_token_never_shows(twilio: TwilioFake):
    channel = twilio_channel(twilio, auth_token="wrong-token-5f2b9c")
    try:
        with pytest.raises(DeliveryError) as err:
            await channel.send(notification())
    finally:
        await channel.close()
    assert str(err.value) == "twilio delivery failed: HTTP 401 (20003)"
    assert len(twilio.requests) == 1
    assert "5f2b9c" not in repr(err.value) and twilio.auth_token not in str(err.value)


async def test_twilio_provider_echoing_the_token_or_the_message_keeps_only_its_code(
    twilio: TwilioFake,
):
    """Twilio's message is its own text: it can quote the token, or the SMS it refused
    (``Message filtered: 'Your code is 482913'``). Only the code is kept."""
    message = f"bad token {twilio.auth_token}; Message filtered: 'Your code is 482913'"
    twilio.script.then(Reply(400, {"code": 30007, "message": message}))
    channel = twilio_channel(twilio)
    try:
        with pytest.raises(DeliveryError) as err:
            await channel.send(notification(body="Your code is 482913"))
    finally:
        await channel.close()
    assert str(err.value) == "twilio delivery failed: HTTP 400 (30007)"


async def test_twilio_hanging_is_bounded_by_the_delivery_timeout(twilio: TwilioFake):
    twilio.script.then(HANG, HANG, HANG, HANG, HANG)
    channel = twilio_channel(twilio, policy=fast_policy(timeout=1.5))
    started = time.monotonic()
    try:
        with pytest.raises(DeliveryError) as err:
            await channel.send(notification())
    finally:
        await channel.close()
    elapsed = time.monotonic() - started
    assert elapsed < 1.5 + 0.5, elapsed
    assert str(err.value).startswith("twilio delivery failed: timeout after ")
    assert twilio.messages == []


async def test_twilio_slow_then_hanging_then_ok_within_budget(twilio: TwilioFake):
    """A timed-out attempt's connection is dropped; the retry on a new one succeeds."""
    twilio.script.then(HANG)
    channel = twilio_channel(twilio, policy=fast_policy(timeout=3))
    try:
        await channel.send(notification())
    finally:
        await channel.close()
    assert len(twilio.requests) == 2 and len(twilio.messages) == 1


async def test_twilio_429_retry_after_is_honoured(twilio: TwilioFake):
    twilio.script.then(
        Reply(429, {"code": 20429, "message": "Too Many Requests"}, {"Retry-After": "1"})
    )
    channel = twilio_channel(twilio)
    try:
        await channel.send(notification())
    finally:
        await channel.close()
    first, second = twilio.requests
    assert second.at - first.at >= 1.0
    assert len(twilio.messages) == 1


async def test_twilio_429_retry_after_beyond_budget_fails_fast(twilio: TwilioFake):
    twilio.script.then(
        Reply(429, {"code": 20429, "message": "Too Many Requests"}, {"Retry-After": "120"})
    )
    channel = twilio_channel(twilio)
    try:
        with pytest.raises(DeliveryError) as err:
            await channel.send(notification())
    finally:
        await channel.close()
    assert "HTTP 429 (20429)" in str(err.value)
    assert "Retry-After 120s is beyond the 3s delivery budget" in str(err.value)
    assert len(twilio.requests) == 1


async def test_twilio_unreachable_is_retried_then_reported():
    channel = TwilioChannel(
        account_sid="AC" + "1" * 32,
        auth_token="secret-token",
        from_number="+15017122661",
        base_url=f"http://127.0.0.1:{free_port()}",
        policy=fast_policy(timeout=1),
    )
    try:
        with pytest.raises(DeliveryError) as err:
            await channel.send(notification())
    finally:
        await channel.close()
    assert str(err.value).startswith("twilio delivery failed: cannot connect (")
    assert "attempts" in str(err.value) and "127.0.0.1" not in str(err.value)


async def test_twilio_concurrency_is_bounded(twilio: TwilioFake):
    twilio.script.then(*[Delay(0.2)] * 6)
    channel = twilio_channel(twilio, max_concurrency=2)
    try:
        await asyncio.gather(
            *(channel.send(notification(recipient=f"+4071234560{i}")) for i in range(6))
        )
    finally:
        await channel.close()
    assert len(twilio.messages) == 6 and twilio.max_in_flight == 2


# -- webhook ------------------------------------------------------------------------------------


@pytest.fixture
def hook() -> Iterator[WebhookFake]:
    with WebhookFake(required_headers={"X-Api-Key": "k-7d1e0f9a"}) as fake:
        yield fake


def sms_webhook(fake: WebhookFake, headers=(("X-Api-Key", "k-7d1e0f9a"),), **kw):
    return WebhookChannel(
        "SMS", url=fake.hook_url, headers=headers, policy=fast_policy(**kw.pop("policy", {})), **kw
    )


async def test_sms_webhook_posts_json_with_configured_headers(hook: WebhookFake):
    channel = sms_webhook(hook)
    try:
        await channel.send(notification(body="OTP 777", process_instance_id=42))
    finally:
        await channel.close()
    assert hook.messages == [
        {"to": "+40712345678", "body": "OTP 777", "templateName": "otpSms", "processInstanceId": 42}
    ]
    [request] = hook.requests
    assert request.headers["X-Api-Key"] == "k-7d1e0f9a"
    assert request.content_type == "application/json"


async def test_sms_webhook_retry_keeps_the_idempotency_key(hook: WebhookFake):
    hook.script.then(Reply(502, b"bad gateway"), Reply(500, b"oops"))
    channel = sms_webhook(hook)
    try:
        await channel.send(notification())
        await channel.send(notification())
    finally:
        await channel.close()
    keys = [r.headers["Idempotency-Key"] for r in hook.requests]
    assert len(keys) == 4 and len(hook.messages) == 2
    assert keys[0] == keys[1] == keys[2] != keys[3]


async def test_sms_webhook_resend_of_one_message_carries_its_key(hook: WebhookFake):
    """A resend after a worker crash is the same message: the endpoint can drop it."""
    channel = sms_webhook(hook)
    try:
        await channel.send(notification(message_key="5f0c" * 8))
        await channel.send(notification(message_key="5f0c" * 8))
    finally:
        await channel.close()
    assert [r.headers["Idempotency-Key"] for r in hook.requests] == ["5f0c" * 8] * 2


async def test_sms_webhook_4xx_is_final_and_hides_url_and_headers(hook: WebhookFake):
    channel = sms_webhook(hook, headers=(("X-Api-Key", "wrong-key-3c9d"),))
    try:
        with pytest.raises(DeliveryError) as err:
            await channel.send(notification())
    finally:
        await channel.close()
    assert str(err.value) == "webhook delivery failed: HTTP 401"
    assert len(hook.requests) == 1


async def test_sms_webhook_refuses_a_non_e164_recipient():
    channel = WebhookChannel("SMS", url="http://127.0.0.1:9/hook")
    assert "E.164" in channel.check_recipient("0712345678")
    assert channel.check_recipient("+40712345678") is None
