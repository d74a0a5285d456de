"""A read model of every template on every worker, fed by the ``templates`` changelog topic.

The ``templates`` table is partitioned: a worker holds only the partitions it owns, but an OTP
request for any template can land on any worker (requests are routed by ``clientId``). Faust's
``GlobalTable`` would fix that, but has open multi-worker problems (endless recovery, #283).
So, as Kafka Streams' GlobalKTable does, each worker runs its own consumer *outside* the
consumer group, assigned every partition of the compacted changelog, and keeps a map it serves
reads from. Writes still go through one agent (one writer per key); the changelog stays the one
source of truth, and a new worker rebuilds the map from Kafka alone.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from app import codec
from app.core import render
from app.core.templates import is_html, template_key

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CachedTemplate:
    """A stored template with its compiled form (compiled once per version)."""

    data: dict[str, Any]
    compiled: render.CompiledTemplate | None

    @property
    def version(self) -> int:
        return int(self.data.get("version", 0))


def compile_stored(data: dict[str, Any]) -> render.CompiledTemplate | None:
    """Compile a stored template, or None if it no longer compiles (it did when it was saved)."""
    try:
        return render.compile_cached(
            (data["name"], data["language"], data.get("version")),
            data.get("subject"),
            data["body"],
            html=is_html(data["type"]),
        )
    except (render.TemplateError, KeyError):
        return None


class TemplateCache:
    """Every template, by (name, language), kept current from the changelog topic."""

    def __init__(
        self, bootstrap_servers: str, topic: str, partitions: int, default_language: str
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.partitions = partitions
        self.default_language = default_language
        self._entries: dict[str, CachedTemplate] = {}
        self.ready = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None

    # -- reads -------------------------------------------------------------------------------
    def get(self, name: str, language: str | None = None) -> CachedTemplate | None:
        return self._entries.get(template_key(name, language or self.default_language))

    def resolve(self, name: str, language: str | None) -> CachedTemplate | None:
        """The template in the asked language, else in the default language (FlowX behaviour)."""
        found = self.get(name, language) if language else None
        return found or self.get(name, self.default_language)

    def all(self) -> list[dict[str, Any]]:
        return [entry.data for _, entry in sorted(self._entries.items())]

    def __len__(self) -> int:
        return len(self._entries)

    # -- writes ------------------------------------------------------------------------------
    def apply(self, key: str, value: bytes | dict[str, Any] | None) -> None:
        """Apply one changelog record (None is a tombstone) or a write this worker just made.

        A record older than what the map holds is skipped, so a write applied at once by the
        view that made it is not undone by the changelog catching up a moment later.
        """
        if value is None:
            self._entries.pop(key, None)
            return
        data = codec.loads(value) if isinstance(value, bytes | bytearray) else value
        current = self._entries.get(key)
        if current is not None and int(data.get("version", 0)) < current.version:
            return
        self._entries[key] = CachedTemplate(data=data, compiled=compile_stored(data))

    # -- the consumer ------------------------------------------------------------------------
    async def run(self) -> None:
        """Tail the changelog forever; set ``ready`` once caught up with its end at start."""
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            client_id=f"template-cache-{self.topic}",
        )
        self._consumer = consumer
        await consumer.start()
        try:
            await self._wait_for_topic(consumer)
            tps = [TopicPartition(self.topic, p) for p in range(self.partitions)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            end = await consumer.end_offsets(tps)
            pending = {tp for tp in tps if end[tp] > 0}
            while True:
                if not pending and not self.ready.is_set():
                    log.info("template cache ready: %d templates", len(self._entries))
                    self.ready.set()
                batches = await consumer.getmany(timeout_ms=200, max_records=1000)
                for records in batches.values():
                    for record in records:
                        if record.key is not None:
                            self.apply(record.key.decode(), record.value)
                for tp in list(pending):
                    if await consumer.position(tp) >= end[tp]:
                        pending.discard(tp)
        finally:
            await consumer.stop()

    async def _wait_for_topic(self, consumer: AIOKafkaConsumer) -> None:
        """The changelog is created by Faust when the table starts (with the table's partition
        count, which Faust checks); wait for it to exist."""
        while self.topic not in await consumer.topics():
            await asyncio.sleep(0.2)
