"""The app factory: one ``faust.App`` wired with its topics, tables, agents and views.

``create_app(settings)`` builds a complete, independent app, so tests can run several with
different settings; ``app`` (built on first access from the environment) is the one the
``faust`` command line and ``python -m app worker`` run.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import faust

from agents import KeyedDispatcher, TopicOutbox
from agents import notify as notify_agents
from agents import otp as otp_agents
from agents import sendlog as sendlog_agents
from agents import templates as template_agents
from app.attachments import AttachmentStore
from app.channels.base import Channel
from app.channels.factory import build_channels, build_forwarder
from app.channels.kafka import KafkaForwarder
from app.core.access import TokenRegistry
from app.core.otp import OtpPolicy
from app.core.partitions import Partitioner
from app.core.render import RenderLimits
from app.flows import DeadLetters
from app.flows.events import Events
from app.flows.notify import NotifyFlows, NotifyLimits
from app.flows.otp import OtpFlows, OtpLimits
from app.flows.receipts import ReceiptProcessor
from app.flows.sendlog import SendLog
from app.logs import logging_config
from app.metrics import Metrics
from app.offsets import OffsetLedger
from app.render_pool import RenderPool
from app.runtime import fetch, http
from app.runtime.consumer import LedgerApp
from app.runtime.store import table_scan
from app.runtime.worker import Worker
from app.settings import PRODUCER_MAX_REQUEST_BYTES, Settings
from tables import (
    Tables,
    Topics,
    changelog_topic,
    define_tables,
    define_topics,
    message_commands_topic,
    notify_commands_topic,
    otp_commands_topic,
    receiver_commands_topic,
    template_commands_topic,
    template_results_topic,
)
from tables.template_cache import TemplateCache
from web import register_views
from web.errors import error_middleware
from web.openapi import limits_of, operations
from web.query import url_middleware

log = logging.getLogger(__name__)
# Requests handled at once by one worker (across identifiers); bounds memory and open sends.
MAX_IN_FLIGHT = 512


@dataclass(frozen=True)
class Context:
    """Everything an agent or a view needs, built once per app, in one go (no module state)."""

    settings: Settings
    app: LedgerApp
    topics: Topics
    tables: Tables
    cache: TemplateCache
    channels: dict[str, Channel]
    metrics: Metrics
    outbox: TopicOutbox
    dispatcher: KeyedDispatcher
    flows: OtpFlows
    render_pool: RenderPool
    forwarder: KafkaForwarder
    store: AttachmentStore | None
    notify_dispatcher: KeyedDispatcher
    notify_flows: NotifyFlows
    receipts: ReceiptProcessor
    send_log: SendLog
    access: TokenRegistry


def otp_policy(settings: Settings) -> OtpPolicy:
    return OtpPolicy(
        length=settings.otp_length,
        alphabet=settings.otp_alphabet,
        ttl_seconds=settings.otp_expire_seconds,
        max_attempts=settings.otp_max_attempts,
        max_sends=settings.otp_max_sends,
        send_window_seconds=settings.otp_send_window_seconds,
    )


def attachment_store(settings: Settings) -> AttachmentStore | None:
    """The S3-compatible store attachments are read from, if one is configured."""
    if not settings.s3_url:
        return None
    return AttachmentStore(
        url=settings.s3_url,
        access_key=settings.s3_access_key or "",
        secret_key=settings.s3_secret_key or "",
        region=settings.s3_region,
        bucket_prefix=settings.s3_bucket_prefix,
        timeout=settings.delivery_timeout_seconds,
    )


def notify_limits(settings: Settings) -> NotifyLimits:
    return NotifyLimits(
        max_request_bytes=settings.max_request_bytes,
        max_receivers=settings.notify_max_receivers,
        default_language=settings.template_default_language,
        sender_allowlist=settings.sender_allowlist,
        attachment_max_bytes=settings.attachment_max_bytes,
        replay_seconds=settings.notify_replay_seconds,
        sms_allowed_countries=settings.sms_allowed_countries,
        notify_in=settings.topic_notify_in,
    )


def worker_class(shutdown_timeout: float) -> type:
    return type("Worker", (Worker,), {"shutdown_timeout": shutdown_timeout})


def create_app(settings: Settings, *, channels: dict[str, Channel] | None = None) -> faust.App:
    """Build the Faust app for ``settings`` (already validated by ``Settings.from_env``)."""
    fetch.install()  # no record can stop a consumer of this process (see app.runtime.fetch)
    http.install()  # a request aiohttp cannot parse is answered in JSON (app.runtime.http)
    app = LedgerApp(
        settings.app_id,
        # Faust reads about a hundred unprefixed variables (STREAM_WAIT_EMPTY, WEB_PORT, ...)
        # and lets them override what is passed here; every setting of ours is Settings'.
        env={},
        # ledger://: Faust's aiokafka transport with our consumer (app.runtime.consumer).
        broker=[f"ledger://{h.strip()}" for h in settings.kafka_bootstrap_servers.split(",")],
        store="rocksdb://",
        datadir=settings.data_dir,
        autodiscover=False,
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication_factor,
        topic_allow_declare=True,
        consumer_auto_offset_reset="earliest",
        web_host=settings.web_host,
        web_port=settings.web_port,
        web_bind=settings.web_host,
        web_application_options={
            "middlewares": [
                error_middleware(settings.api_max_body_bytes),
                url_middleware(operations(limits_of(settings))),
            ],
            "client_max_size": settings.api_max_body_bytes,
        },
        web_transport="tcp://",
        # Faust's built-in views would serve table contents and topology without any auth.
        web_router_enabled=False,
        web_tables_enabled=False,
        web_graph_enabled=False,
        web_stats_enabled=False,
        producer_linger=settings.producer_linger_ms / 1000,
        producer_partitioner=Partitioner(),
        # The size MAX_REQUEST_BYTES is checked against (settings): what fits is answered.
        producer_max_request_size=PRODUCER_MAX_REQUEST_BYTES,
        broker_commit_interval=1.0,
        # A worker that dies (kill -9, lost host) is noticed after this long and its partitions
        # move to the others; Faust's default of 60 s is a minute without answers.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
        # On rebalance and shutdown, wait until every event in flight is acknowledged (our
        # tasks ack after handling) before partitions move and offsets are committed.
        stream_wait_empty=True,
        Worker=worker_class(settings.shutdown_timeout_seconds),
        table_standby_replicas=settings.table_standby_replicas,
        logging_config=logging_config(
            settings.log_level,
            settings.log_format,
            secrets=settings.secret_values(),
            library_level=settings.library_log_level,
        ),
    )
    # The source topics whose commits follow handled records exactly (``app.offsets``).
    app.offset_ledger = OffsetLedger(
        [
            settings.topic_generate_in,
            settings.topic_validate_in,
            settings.topic_notify_in,
            otp_commands_topic(settings),
            notify_commands_topic(settings),
            message_commands_topic(settings),
            receiver_commands_topic(settings),
            template_commands_topic(settings),
        ]
    )
    app.recovery_stall_seconds = settings.recovery_stall_seconds
    topics, tables = define_topics(app, settings), define_tables(app, settings)
    render_limits = RenderLimits(settings.render_timeout_ms, settings.render_max_output_bytes)
    render_pool = RenderPool(render_limits)
    cache = TemplateCache(
        settings.kafka_bootstrap_servers,
        changelog_topic(settings, "templates"),
        settings.topic_partitions,
        settings.template_default_language,
        template_results_topic(settings),
        render_pool.compile,
    )
    forwarder = build_forwarder(settings)
    channels = channels if channels is not None else build_channels(settings, forwarder)
    store = attachment_store(settings)
    metrics = Metrics()
    outbox = TopicOutbox(app, topics)
    ctx = Context(
        settings=settings,
        access=settings.token_registry(),
        app=app,
        topics=topics,
        tables=tables,
        cache=cache,
        channels=channels,
        metrics=metrics,
        outbox=outbox,
        dispatcher=KeyedDispatcher(MAX_IN_FLIGHT),
        flows=OtpFlows.build(
            otps=tables.otps,
            receiver_rows=tables.receivers,
            scan_of=table_scan,
            templates=cache,
            channels=channels,
            policy=otp_policy(settings),
            secret=(settings.otp_hmac_secret or "").encode(),
            limits=OtpLimits(
                max_request_bytes=settings.max_request_bytes,
                max_sends_per_receiver=settings.otp_max_sends_per_receiver,
                send_window_seconds=settings.otp_send_window_seconds,
                sms_allowed_countries=settings.sms_allowed_countries,
                generate_in=settings.topic_generate_in,
                validate_in=settings.topic_validate_in,
                otp_commands=otp_commands_topic(settings),
            ),
            render_limits=render_limits,
            outbox=outbox,
            metrics=metrics,
            clock=time.time,
            undecodable=fetch.undecodable,
        ),
        render_pool=render_pool,
        forwarder=forwarder,
        store=store,
        notify_dispatcher=KeyedDispatcher(MAX_IN_FLIGHT),
        notify_flows=NotifyFlows.build(
            rows=tables.notifications,
            scan_of=table_scan,
            templates=cache,
            channels=channels,
            forwarder=forwarder,
            store=store,
            limits=notify_limits(settings),
            render_limits=render_limits,
            outbox=outbox,
            metrics=metrics,
            clock=time.time,
            undecodable=fetch.undecodable,
            secret=(settings.otp_hmac_secret or "").encode(),
        ),
        receipts=ReceiptProcessor(
            tables.messages,
            table_scan(tables.messages),
            outbox,
            Events(outbox, metrics, time.time),
            DeadLetters(outbox, metrics),
            settings.receipt_window_seconds,
            time.time,
        ),
        send_log=SendLog(
            tables.send_log,
            outbox,
            metrics,
            table_scan(tables.send_log),
            settings.send_log_retention_days * 86400,
            time.time,
        ),
    )
    template_agents.register(ctx)
    otp_agents.register(ctx)
    notify_agents.register(ctx)
    sendlog_agents.register(ctx)
    register_views(ctx)

    @app.task
    async def run_template_cache() -> None:
        await ctx.render_pool.start()  # the read model compiles every version it reads there
        await ctx.cache.run()

    @app.task
    async def say_event_loop() -> None:
        loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
        log.info("worker running on the %s event loop", loop)

    @app.task
    async def warn_unmatched_reply_topics() -> None:
        for topic in settings.unmatched_out_topics():
            log.warning(
                "REPLY TOPIC NOT READ BY THE ENGINE: %r does not match ENGINE_TOPIC_PATTERN %r; "
                "the engine will never see replies sent there",
                topic,
                settings.engine_topic_pattern,
            )

    @app.service
    class Closer(faust.Service):
        """Closes the channels' connections and the render children when the worker stops."""

        async def on_stop(self) -> None:
            for channel in ctx.channels.values():
                await channel.close()
            await ctx.forwarder.close()
            if ctx.store is not None:
                await ctx.store.close()
            await ctx.render_pool.close()

    return app


def __getattr__(name: str) -> Any:
    """Build the module-level ``app`` lazily, so importing this module needs no environment."""
    if name == "app":
        app = create_app(Settings.from_env())
        globals()["app"] = app
        return app
    raise AttributeError(name)
