"""Topics and tables of the service: the names and shapes of everything kept in Kafka.

The tables hold raw bytes (orjson documents) so their changelog topics are readable by plain
Kafka tools and by the template read model, and so no OTP code can slip in through a generic
serializer: only :mod:`app.core.otp` records (HMACs) are written to ``otps``.
"""

from __future__ import annotations

from dataclasses import dataclass

import faust

from app.kafka_admin import TopicSpec
from app.settings import Settings

# The tables (raw bytes, see the module docstring), each with a changelog topic of its name.
TABLES = {
    "templates": "notification templates by name:language (orjson)",
    "otps": "issued OTPs by clientId: HMAC, expiry, attempts, send times, receiver (never the "
    "code)",
    "receivers": "send times per receiver, keyed by the receiver's HMAC (no address in clear)",
    "messages": "messages a provider reports on (Twilio's status callbacks), by its message "
    "id: receiver, request, statuses so far",
    "send_log": "the send log by receiver: each send's events and latest status (app.flows."
    "sendlog)",
    "notifications": "what became of each receiver of a notification request, by its source "
    "record (topic/partition/offset); no rendered body",
}


def changelog_topic(settings: Settings, table: str) -> str:
    """Faust's name for a table's changelog topic."""
    return f"{settings.app_id}-{table}-changelog"


def otp_commands_topic(settings: Settings) -> str:
    return f"{settings.app_id}-otp-commands"


def receiver_commands_topic(settings: Settings) -> str:
    return f"{settings.app_id}-receiver-commands"


def notify_commands_topic(settings: Settings) -> str:
    return f"{settings.app_id}-notify-commands"


def message_commands_topic(settings: Settings) -> str:
    return f"{settings.app_id}-message-commands"


def log_queries_topic(settings: Settings) -> str:
    return f"{settings.app_id}-log-queries"


def template_commands_topic(settings: Settings) -> str:
    return f"{settings.app_id}-template-commands"


def template_results_topic(settings: Settings) -> str:
    return f"{settings.app_id}-template-results"


def internal_topics(settings: Settings) -> list[str]:
    """The topics whose partitions hold live state by key: the re-keyed commands, the events
    (``send_log`` is built per partition from them) and the tables' changelogs. All must have
    ``TOPIC_PARTITIONS`` partitions."""
    commands = [
        settings.topic_events,
        otp_commands_topic(settings),
        receiver_commands_topic(settings),
        notify_commands_topic(settings),
        message_commands_topic(settings),
        log_queries_topic(settings),
        template_commands_topic(settings),
    ]
    return [*commands, *(changelog_topic(settings, table) for table in TABLES)]


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """Every topic a worker consumes, answers on or keeps its tables in, created when missing."""
    n, rf = settings.topic_partitions, settings.topic_replication_factor
    names = [
        settings.topic_generate_in,
        settings.topic_generate_out,
        settings.topic_validate_in,
        settings.topic_validate_out,
        settings.topic_notify_in,
        settings.topic_notify_out,
        settings.topic_events,
        settings.topic_dlq,
        otp_commands_topic(settings),
        notify_commands_topic(settings),
        message_commands_topic(settings),
        log_queries_topic(settings),
        receiver_commands_topic(settings),
        template_commands_topic(settings),
    ]
    # Write results are read by every worker from one partition and matter for seconds only.
    results = TopicSpec(template_results_topic(settings), 1, rf, {"retention.ms": "3600000"})
    # The tables' changelogs, compacted as Faust would create them: if a worker is assigned
    # partitions before Faust's own creation is visible, it fails every write with
    # PartitionsMismatch until restarted.
    changelogs = [
        TopicSpec(changelog_topic(settings, table), n, rf, {"cleanup.policy": "compact"})
        for table in TABLES
    ]
    return [*(TopicSpec(name, n, rf) for name in names), results, *changelogs]


@dataclass(frozen=True)
class Topics:
    generate_in: faust.TopicT
    generate_out: faust.TopicT
    validate_in: faust.TopicT
    validate_out: faust.TopicT
    dlq: faust.TopicT
    otp_commands: faust.TopicT
    receiver_commands: faust.TopicT
    template_commands: faust.TopicT
    template_results: faust.TopicT
    notify_in: faust.TopicT
    notify_out: faust.TopicT
    notify_commands: faust.TopicT
    events: faust.TopicT
    message_commands: faust.TopicT
    log_queries: faust.TopicT


@dataclass(frozen=True)
class Tables:
    templates: faust.TableT
    otps: faust.TableT
    receivers: faust.TableT
    notifications: faust.TableT
    messages: faust.TableT
    send_log: faust.TableT


def _raw_topic(app: faust.App, name: str, **kwargs: object) -> faust.TopicT:
    return app.topic(
        name,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        **kwargs,
    )


def define_topics(app: faust.App, settings: Settings) -> Topics:
    # "internal" makes Faust create a topic that is missing (with TOPIC_PARTITIONS partitions);
    # an existing topic is never altered. The engine's topics are declared too, so a fresh
    # cluster works at once and a worker never waits on a topic nobody created.
    internal = {"internal": True, "partitions": settings.topic_partitions}
    return Topics(
        generate_in=_raw_topic(app, settings.topic_generate_in, **internal),
        generate_out=_raw_topic(app, settings.topic_generate_out, **internal),
        validate_in=_raw_topic(app, settings.topic_validate_in, **internal),
        validate_out=_raw_topic(app, settings.topic_validate_out, **internal),
        dlq=_raw_topic(app, settings.topic_dlq, **internal),
        # Requests re-keyed by clientId: generate and validate for one identifier land on one
        # partition, in order, next to that identifier's row of the ``otps`` table.
        otp_commands=_raw_topic(app, otp_commands_topic(settings), **internal),
        # Generate requests keyed by the receiver's HMAC, next to its row of ``receivers``: the
        # per-receiver send limit has one owner however many clientIds a caller uses.
        receiver_commands=_raw_topic(app, receiver_commands_topic(settings), **internal),
        # Template writes keyed by name:language, co-partitioned with the ``templates`` table.
        template_commands=_raw_topic(app, template_commands_topic(settings), **internal),
        # Write results for the HTTP views; read by every worker outside the consumer group.
        template_results=_raw_topic(app, template_results_topic(settings)),
        notify_in=_raw_topic(app, settings.topic_notify_in, **internal),
        notify_out=_raw_topic(app, settings.topic_notify_out, **internal),
        # Notification requests keyed by their source record, next to its ``notifications`` row.
        notify_commands=_raw_topic(app, notify_commands_topic(settings), **internal),
        events=_raw_topic(app, settings.topic_events, **internal),
        # Provider message ids (Twilio's MessageSid), next to their ``messages`` rows.
        message_commands=_raw_topic(app, message_commands_topic(settings), **internal),
        # A send-log query or sweep per partition, co-partitioned with ``send_log``.
        log_queries=_raw_topic(app, log_queries_topic(settings), **internal),
    )


def rocksdb_options(memory_mb: int) -> dict[str, int]:
    """RocksDB's bounds for one table partition: two write buffers of a quarter each (a full
    one is flushed while the other takes writes) and a read cache of half. Faust's defaults
    (3 x 64 MB buffers and a 2 GB cache, per partition) let a worker's memory grow by
    gigabytes before anything is flushed or evicted."""
    quarter = memory_mb * 1024 * 1024 // 4
    return {
        "write_buffer_size": quarter,
        "max_write_buffer_number": 2,
        "block_cache_size": 2 * quarter,
    }


def define_tables(app: faust.App, settings: Settings) -> Tables:
    return Tables(
        **{
            name: app.Table(
                name,
                key_type=bytes,
                value_type=bytes,
                partitions=settings.topic_partitions,
                help=help,
                options=rocksdb_options(settings.table_memory_mb),
            )
            for name, help in TABLES.items()
        }
    )
