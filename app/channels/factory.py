"""The channels of one app, each with its provider's client, from the settings.

Which setting feeds which constructor argument is declared with the setting itself (``option=``
in app/settings.py, read back by ``Settings.channel_options``), so a provider setting is added
in one place. Only what is not a plain per-provider setting is passed here: the delivery budget
every channel shares, the app's own Kafka settings the Kafka SMS channel reuses, and the FCM key,
which is loaded from its file.
"""

from __future__ import annotations

from app.channels.base import Channel, UnconfiguredChannel
from app.channels.fcm import FcmChannel, ServiceAccount
from app.channels.kafka import KafkaChannel, KafkaForwarder
from app.channels.retry import RetryPolicy
from app.channels.smtp import SmtpChannel
from app.channels.twilio import TWILIO_CALLBACK_PATH, TwilioChannel
from app.channels.webhook import WebhookChannel
from app.settings import Settings


def build_forwarder(settings: Settings) -> KafkaForwarder:
    """The producer both flows forward to external adapters with (its topic's settings)."""
    return KafkaForwarder(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication_factor,
        **settings.channel_options("kafka"),
        policy=RetryPolicy(timeout=settings.delivery_timeout_seconds),
        max_concurrency=settings.delivery_max_concurrency,
    )


def build_channels(
    settings: Settings, forwarder: KafkaForwarder | None = None
) -> dict[str, Channel]:
    """One channel per FlowX channel name, each with its provider's client (opened lazily).

    ``settings`` must have passed ``check_channels`` (``Settings.from_env`` runs it): the
    chosen providers' required values are then set. ``SMS_PROVIDER=kafka`` publishes through
    ``forwarder`` (the app's, shared with forwarded notifications) or one of its own.
    """
    policy = RetryPolicy(timeout=settings.delivery_timeout_seconds)
    concurrency = settings.delivery_max_concurrency
    options = settings.channel_options
    channels: dict[str, Channel] = {
        "MAIL": SmtpChannel(**options("smtp"), policy=policy, max_concurrency=concurrency),
        "SMS": UnconfiguredChannel("SMS"),
        "PUSH": UnconfiguredChannel("PUSH"),
    }
    if settings.sms_provider == "twilio":
        base = settings.public_base_url
        channels["SMS"] = TwilioChannel(
            **options("twilio"),
            policy=policy,
            max_concurrency=concurrency,
            status_callback=f"{base}{TWILIO_CALLBACK_PATH}" if base else None,
        )
    elif settings.sms_provider == "webhook":
        channels["SMS"] = WebhookChannel(
            "SMS", **options("sms_webhook"), policy=policy, max_concurrency=concurrency
        )
    elif settings.sms_provider == "kafka":
        forwarder = forwarder or build_forwarder(settings)
        channels["SMS"] = KafkaChannel(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            topic=forwarder.topic,
            forwarder=forwarder,
        )
    if settings.push_provider == "fcm":
        channels["PUSH"] = FcmChannel(
            account=ServiceAccount.load(settings.fcm_credentials_file or ""),
            **options("fcm"),
            policy=policy,
            max_concurrency=concurrency,
        )
    elif settings.push_provider == "webhook":
        channels["PUSH"] = WebhookChannel(
            "PUSH", **options("push_webhook"), policy=policy, max_concurrency=concurrency
        )
    return channels
