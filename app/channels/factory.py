"""The channels of one app, each with its provider's client, from the settings."""

from __future__ import annotations

from app.channels.base import Channel, UnconfiguredChannel
from app.channels.fcm import FcmChannel, ServiceAccount
from app.channels.kafka import KafkaChannel
from app.channels.retry import RetryPolicy
from app.channels.smtp import SmtpChannel
from app.channels.twilio import TwilioChannel
from app.channels.webhook import WebhookChannel
from app.settings import Settings


def build_channels(settings: Settings) -> dict[str, Channel]:
    """One channel per FlowX channel name, each with its provider's client (opened lazily)."""
    policy = RetryPolicy(timeout=settings.delivery_timeout_seconds)
    concurrency = settings.delivery_max_concurrency
    channels: dict[str, Channel] = {
        "MAIL": SmtpChannel(
            host=settings.smtp_host,
            port=settings.smtp_port,
            security=settings.smtp_security,
            username=settings.smtp_username,
            password=settings.smtp_password,
            from_email=settings.mail_from_email,
            from_name=settings.mail_from_name,
            timeout=settings.smtp_timeout_seconds,
            pool_size=settings.smtp_pool_size,
            ca_file=settings.smtp_ca_file,
            policy=policy,
            max_concurrency=concurrency,
        ),
        "SMS": UnconfiguredChannel("SMS"),
        "PUSH": UnconfiguredChannel("PUSH"),
    }
    if settings.sms_provider == "twilio":
        channels["SMS"] = TwilioChannel(
            account_sid=settings.twilio_account_sid or "",
            auth_token=settings.twilio_auth_token or "",
            from_number=settings.twilio_from,
            messaging_service_sid=settings.twilio_messaging_service_sid,
            base_url=settings.twilio_base_url,
            policy=policy,
            max_concurrency=concurrency,
        )
    elif settings.sms_provider == "webhook":
        channels["SMS"] = WebhookChannel(
            "SMS",
            url=settings.sms_webhook_url or "",
            headers=settings.sms_webhook_headers,
            policy=policy,
            max_concurrency=concurrency,
        )
    elif settings.sms_provider == "kafka":
        channels["SMS"] = KafkaChannel(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            topic=settings.topic_notification_external_out,
            topic_partitions=settings.topic_partitions,
            topic_replication_factor=settings.topic_replication_factor,
            policy=policy,
            max_concurrency=concurrency,
        )
    if settings.push_provider == "fcm":
        channels["PUSH"] = FcmChannel(
            project_id=settings.fcm_project_id or "",
            account=ServiceAccount.load(settings.fcm_credentials_file or ""),
            base_url=settings.fcm_base_url,
            token_url=settings.fcm_token_url,
            policy=policy,
            max_concurrency=concurrency,
        )
    elif settings.push_provider == "webhook":
        channels["PUSH"] = WebhookChannel(
            "PUSH",
            url=settings.push_webhook_url or "",
            headers=settings.push_webhook_headers,
            policy=policy,
            max_concurrency=concurrency,
        )
    return channels
