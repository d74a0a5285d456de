"""Channel settings: parsing, cross-field checks at startup, secrets masked, channels built."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import get_args

import pytest

from app.channels.base import UnconfiguredChannel
from app.channels.factory import build_channels
from app.channels.fcm import FcmChannel
from app.channels.kafka import KafkaChannel
from app.channels.smtp import SmtpChannel
from app.channels.twilio import TwilioChannel
from app.channels.webhook import WebhookChannel
from app.settings import ConfigError, Provider, Settings
from devtools.support import config_refusal
from tests.fakes.google import GoogleFake

GOOD = {"OTP_HMAC_SECRET": "s" * 32, "NOTIFY_API_TOKEN": "t" * 20}
TWILIO = {
    "SMS_PROVIDER": "twilio",
    "TWILIO_ACCOUNT_SID": "AC" + "a" * 32,
    "TWILIO_AUTH_TOKEN": "tw-token-8e1f2d",
    "TWILIO_FROM": "+15017122661",
}


@pytest.fixture(scope="module")
def key_file(tmp_path_factory) -> Path:
    # The fake is only used for its key-file generator here; nothing is sent.
    return GoogleFake().service_account_file(tmp_path_factory.mktemp("keys"))


def test_defaults_leave_sms_and_push_unconfigured():
    s = Settings.from_env(GOOD)
    assert s.sms_provider is None and s.push_provider is None
    assert s.delivery_timeout_seconds == 15 and s.delivery_max_concurrency == 16
    assert s.twilio_base_url == "https://api.twilio.com"
    assert s.fcm_base_url == "https://fcm.googleapis.com"
    assert s.topic_notification_external_out == "ai.flowx.plugin.notification.external.out.v1"
    channels = build_channels(s)
    assert isinstance(channels["MAIL"], SmtpChannel)
    assert isinstance(channels["SMS"], UnconfiguredChannel)
    assert isinstance(channels["PUSH"], UnconfiguredChannel)
    assert Settings.from_env({**GOOD, "SMS_PROVIDER": ""}).sms_provider is None


@pytest.mark.parametrize(
    ("env", "variable", "words"),
    [
        ({"SMS_PROVIDER": "sns"}, "SMS_PROVIDER", "twilio, webhook, kafka"),
        ({"PUSH_PROVIDER": "apns"}, "PUSH_PROVIDER", "fcm, webhook"),
        ({**TWILIO, "TWILIO_ACCOUNT_SID": ""}, "TWILIO_ACCOUNT_SID", "required"),
        ({**TWILIO, "TWILIO_AUTH_TOKEN": ""}, "TWILIO_AUTH_TOKEN", "required"),
        ({**TWILIO, "TWILIO_FROM": ""}, "TWILIO_FROM", "TWILIO_MESSAGING_SERVICE_SID"),
        ({**TWILIO, "TWILIO_ACCOUNT_SID": "AC/../x"}, "TWILIO_ACCOUNT_SID", "letters"),
        ({**TWILIO, "TWILIO_BASE_URL": "ftp://x"}, "TWILIO_BASE_URL", "http"),
        ({"SMS_PROVIDER": "webhook"}, "SMS_WEBHOOK_URL", "required"),
        ({"PUSH_PROVIDER": "webhook"}, "PUSH_WEBHOOK_URL", "required"),
        ({"PUSH_PROVIDER": "fcm", "FCM_CREDENTIALS_FILE": "/x"}, "FCM_PROJECT_ID", "required"),
        ({"PUSH_PROVIDER": "fcm", "FCM_PROJECT_ID": "p"}, "FCM_CREDENTIALS_FILE", "required"),
        (
            {"PUSH_PROVIDER": "fcm", "FCM_PROJECT_ID": "p", "FCM_CREDENTIALS_FILE": "/nope.json"},
            "FCM_CREDENTIALS_FILE",
            "cannot read",
        ),
        ({"SMS_WEBHOOK_HEADERS": '["X-Key"]'}, "SMS_WEBHOOK_HEADERS", "JSON object"),
        ({"SMS_WEBHOOK_HEADERS": '{"X Key": "v"}'}, "SMS_WEBHOOK_HEADERS", "header name"),
        ({"PUSH_WEBHOOK_HEADERS": '{"Host": "v"}'}, "PUSH_WEBHOOK_HEADERS", "set by the service"),
        ({"DELIVERY_TIMEOUT_SECONDS": "0"}, "DELIVERY_TIMEOUT_SECONDS", "between"),
        ({"DELIVERY_MAX_CONCURRENCY": "0"}, "DELIVERY_MAX_CONCURRENCY", "between"),
        (
            {"KAFKA_TOPIC_NOTIFICATION_EXTERNAL_OUT": "a b"},
            "KAFKA_TOPIC_NOTIFICATION_EXTERNAL_OUT",
            "topic",
        ),
    ],
)
def test_bad_channel_settings_name_the_variable(env, variable, words):
    with pytest.raises(ConfigError) as err:
        Settings.from_env({**GOOD, **env})
    assert err.value.variable == variable
    assert str(err.value).startswith(f"{variable}: ") and words in str(err.value)


def test_channel_checks_are_skipped_for_tools():
    s = Settings.from_env({"SMS_PROVIDER": "twilio"}, check_secrets=False)
    assert s.sms_provider == "twilio"


@pytest.mark.parametrize(
    "value",
    [
        '{"X-Api-Key": "hdr-secret-4b1a"',  # broken JSON
        '{"X-Api-Key": "hdr-secret-4b1a\\r\\nEvil: 1"}',  # header injection
        '{"X-Api-Key": ["hdr-secret-4b1a"]}',
    ],
)
def test_header_errors_never_echo_values(value):
    with pytest.raises(ConfigError) as err:
        Settings.from_env({**GOOD, "SMS_WEBHOOK_HEADERS": value})
    assert err.value.variable == "SMS_WEBHOOK_HEADERS" and "hdr-secret" not in str(err.value)


def test_fcm_key_file_that_is_not_a_key_is_refused_without_showing_it(tmp_path: Path):
    path = tmp_path / "key.json"
    path.write_text(json.dumps({"client_email": "a@b", "private_key": "pk-material-77aa"}))
    env = {**GOOD, "PUSH_PROVIDER": "fcm", "FCM_PROJECT_ID": "p", "FCM_CREDENTIALS_FILE": str(path)}
    with pytest.raises(ConfigError) as err:
        Settings.from_env(env)
    assert err.value.variable == "FCM_CREDENTIALS_FILE" and "PEM" in str(err.value)
    assert "pk-material" not in str(err.value)


def test_every_provider_builds_its_channel_and_secrets_stay_masked(key_file: Path):
    s = Settings.from_env(
        {
            **GOOD,
            **TWILIO,
            "PUSH_PROVIDER": "fcm",
            "FCM_PROJECT_ID": "demo",
            "FCM_CREDENTIALS_FILE": str(key_file),
        }
    )
    channels = build_channels(s)
    assert isinstance(channels["SMS"], TwilioChannel) and isinstance(channels["PUSH"], FcmChannel)
    assert "tw-token-8e1f2d" not in repr(s) and "twilio_auth_token='***'" in repr(s)

    hooks = {
        "SMS_PROVIDER": "webhook",
        "SMS_WEBHOOK_URL": "https://hooks.example.com/sms?token=url-secret-1",
        "SMS_WEBHOOK_HEADERS": '{"X-Api-Key": "hdr-secret-2"}',
        "PUSH_PROVIDER": "webhook",
        "PUSH_WEBHOOK_URL": "https://hooks.example.com/push/",
        "PUSH_WEBHOOK_HEADERS": '{"Authorization": "Bearer hdr-secret-3"}',
        "DELIVERY_TIMEOUT_SECONDS": "4.5",
        "DELIVERY_MAX_CONCURRENCY": "3",
    }
    s = Settings.from_env({**GOOD, **hooks})
    assert s.sms_webhook_headers == (("X-Api-Key", "hdr-secret-2"),)
    assert s.push_webhook_url == "https://hooks.example.com/push"
    shown = repr(s)
    assert not any(f"secret-{i}" in shown for i in (1, 2, 3)), shown
    channels = build_channels(s)
    assert isinstance(channels["SMS"], WebhookChannel) and channels["SMS"].name == "SMS"
    assert isinstance(channels["PUSH"], WebhookChannel) and channels["PUSH"].name == "PUSH"
    assert channels["SMS"].delivery.policy.timeout == 4.5
    assert channels["MAIL"].delivery.max_concurrency == 3

    s = Settings.from_env(
        {**GOOD, "SMS_PROVIDER": "kafka", "KAFKA_TOPIC_NOTIFICATION_EXTERNAL_OUT": "my.sms.out"}
    )
    channels = build_channels(s)
    assert isinstance(channels["SMS"], KafkaChannel) and channels["SMS"].topic == "my.sms.out"


def test_worker_exits_with_one_line_for_a_channel_setting():
    line = config_refusal({"PATH": "/usr/bin:/bin", **GOOD, **TWILIO, "TWILIO_AUTH_TOKEN": ""})
    assert "TWILIO_AUTH_TOKEN" in line


CHANNEL_CLASSES = {
    "smtp": SmtpChannel,
    "twilio": TwilioChannel,
    "sms_webhook": WebhookChannel,
    "kafka": KafkaChannel,
    "fcm": FcmChannel,
    "push_webhook": WebhookChannel,
}


@pytest.mark.parametrize("provider", get_args(Provider))
def test_channel_options_name_arguments_of_their_channel(provider):
    options = Settings.from_env(GOOD).channel_options(provider)
    parameters = inspect.signature(CHANNEL_CLASSES[provider]).parameters
    assert options and set(options) <= set(parameters), (provider, sorted(options))
