"""SMS forwarded to a Kafka topic for an external adapter (``SMS_PROVIDER=kafka``).

This is FlowX's own way ("forward on Kafka"): the notification plugin renders the message and
publishes it on ``KAFKA_TOPIC_NOTIFICATION_EXTERNAL_OUT``; an adapter of the operator's (Twilio,
an operator's SMS gateway, ...) sends it. The record is keyed by ``processInstanceId``, carries
every Kafka header of the engine's request (``fxContext``, ``processInstanceUuid``, ...) and its
value is JSON::

    {"channel": "SMS", "to": "+40712345678", "subject": null, "body": "OTP 123456",
     "templateName": "otpSMS", "processInstanceId": 12345}

"Delivered" means the broker acknowledged the record (``acks=all``): a broker that cannot take
it within the delivery budget turns into ``otpSent: false``. The channel has its own producer,
started on the first send and stopped by ``close()``; on that first send it also creates the
topic if it is missing (it never alters an existing one).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError

from app import codec
from app.channels.base import DeliveryError, Notification, check_phone
from app.channels.retry import Delivery, RetryPolicy

log = logging.getLogger(__name__)

PROVIDER = "kafka"


def _header_value(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    return b"" if value is None else str(value).encode()


class KafkaForwarder:
    """Publishes records for an external adapter; ``publish`` returns once the broker has one.

    The one path both flows forward by: the OTP flow's SMS (``SMS_PROVIDER=kafka``, through
    :class:`KafkaChannel`) and notifications whose template says "Forward on Kafka".
    """

    provider = PROVIDER

    def __init__(
        self,
        *,
        bootstrap_servers: str,
        topic: str,
        topic_partitions: int = 1,
        topic_replication_factor: int = 1,
        policy: RetryPolicy | None = None,
        max_concurrency: int = 16,
    ) -> None:
        self.topic = topic
        self._bootstrap = bootstrap_servers
        self._partitions = topic_partitions
        self._replication = topic_replication_factor
        self.delivery = Delivery(PROVIDER, policy or RetryPolicy(), max_concurrency)
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        self._topic_checked = False

    async def _ensure_topic(self, timeout: float) -> None:
        """Create the topic if missing; a cluster that forbids it still gets the send tried."""
        from app.kafka_admin import TopicSpec, ensure_topics

        spec = TopicSpec(self.topic, self._partitions, self._replication)
        try:
            await ensure_topics(self._bootstrap, [spec], timeout=timeout)
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning("could not ensure topic %s exists (%s)", self.topic, type(exc).__name__)
        self._topic_checked = True

    async def _get_producer(self, timeout: float) -> AIOKafkaProducer:
        if self._producer is not None:
            return self._producer
        async with self._lock:
            if self._producer is None:
                if not self._topic_checked:
                    await self._ensure_topic(max(1.0, timeout / 2))
                producer = AIOKafkaProducer(
                    bootstrap_servers=self._bootstrap,
                    acks="all",
                    linger_ms=1,
                    request_timeout_ms=max(1000, int(self.delivery.policy.timeout * 1000)),
                )
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()
                    raise
                self._producer = producer
        return self._producer

    async def publish(
        self, key: bytes, record: dict[str, Any], headers: dict[str, Any]
    ) -> str | None:
        """Produce ``record`` (JSON) with the request's ``headers``; its
        ``topic/partition/offset``, or DeliveryError."""
        value = codec.dumps(record)
        header_list = [(str(k), _header_value(v)) for k, v in (headers or {}).items()]

        async def attempt(timeout: float) -> str | None:
            try:
                producer = await self._get_producer(timeout)
                meta = await producer.send_and_wait(self.topic, value, key=key, headers=header_list)
                return f"{meta.topic}/{meta.partition}/{meta.offset}"
            except KafkaConnectionError:
                raise DeliveryError(PROVIDER, "cannot reach the broker", transient=True) from None
            except KafkaTimeoutError:
                raise DeliveryError(PROVIDER, "timeout", transient=True) from None
            except KafkaError as exc:
                raise DeliveryError(
                    PROVIDER,
                    f"broker refused the record ({type(exc).__name__})",
                    transient=bool(getattr(exc, "retriable", False)),
                ) from None
            except OSError as exc:
                raise DeliveryError(
                    PROVIDER, f"cannot reach the broker ({type(exc).__name__})", transient=True
                ) from None

        return await self.delivery.run(attempt)

    async def close(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()


class KafkaChannel:
    """The SMS channel of ``SMS_PROVIDER=kafka``: one record per message, keyed by
    ``processInstanceId`` (the shape in the module docstring)."""

    provider = PROVIDER

    def __init__(
        self,
        *,
        bootstrap_servers: str,
        topic: str,
        name: str = "SMS",
        check: Callable[[str], str | None] = check_phone,
        topic_partitions: int = 1,
        topic_replication_factor: int = 1,
        policy: RetryPolicy | None = None,
        max_concurrency: int = 16,
        forwarder: KafkaForwarder | None = None,
    ) -> None:
        self.name = name
        self._check = check
        self.forwarder = forwarder or KafkaForwarder(
            bootstrap_servers=bootstrap_servers,
            topic=topic,
            topic_partitions=topic_partitions,
            topic_replication_factor=topic_replication_factor,
            policy=policy,
            max_concurrency=max_concurrency,
        )

    @property
    def topic(self) -> str:
        return self.forwarder.topic

    @property
    def delivery(self) -> Delivery:
        return self.forwarder.delivery

    def check_recipient(self, recipient: str) -> str | None:
        return self._check(recipient)

    def record(self, notification: Notification) -> dict[str, Any]:
        return {
            "channel": notification.channel,
            "to": notification.recipient,
            "subject": notification.subject,
            "body": notification.text if notification.text is not None else notification.body,
            "templateName": notification.template_name,
            "processInstanceId": notification.process_instance_id,
        }

    async def send(self, notification: Notification) -> str | None:
        key = str(notification.process_instance_id).encode()
        return await self.forwarder.publish(key, self.record(notification), notification.headers)

    async def close(self) -> None:
        await self.forwarder.close()
