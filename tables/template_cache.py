"""A read model of every template on every worker, fed by the ``templates`` changelog topic.

The ``templates`` table is partitioned: a worker holds only the partitions it owns, but an OTP
request for any template can land on any worker (requests are routed by ``clientId``). Faust's
``GlobalTable`` would fix that, but has open multi-worker problems (endless recovery, #283).
So, as Kafka Streams' GlobalKTable does, each worker runs its own consumer *outside* the
consumer group, assigned every partition of the compacted changelog, and keeps a map it serves
reads from. Writes still go through one agent (one writer per key); the changelog stays the one
source of truth, and a new worker rebuilds the map from Kafka alone.

The same consumer reads the single-partition ``template-results`` topic, from its end, to hand
each HTTP view the answer of the write it asked for (:meth:`expect`). Faust's ``agent.ask``
would do this, but its reply topic joins the consumer group, so with several workers a reply
can be assigned to a worker that is not waiting for it, and an answered request stays
unacknowledged forever, which blocks shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from app import codec
from app.core import render
from app.core.templates import is_html, template_key
from app.flows.templates import DRAFT_FIELD, REVISION_FIELD, revision
from app.kafka_admin import partition_of
from app.render_pool import RenderPoolError, RenderPoolUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CachedTemplate:
    """A stored template (its published version, which sends use) with its compiled form
    (compiled once per version), and its unpublished draft if it has one."""

    data: dict[str, Any]
    compiled: render.CompiledTemplate | None
    draft: dict[str, Any] | None = None
    revision: int = 0

    @property
    def version(self) -> int:
        return int(self.data.get("version", 0))


#: Compiles a stored template version where the event loop does not wait on it (the render
#: pool's :meth:`~app.render_pool.RenderPool.compile`).
Compiler = Callable[[Mapping[str, Any]], Awaitable[render.CompiledTemplate]]


async def compile_stored(
    compile: Compiler, key: str, data: Mapping[str, Any]
) -> render.CompiledTemplate | None:
    """A stored template compiled, or None if it no longer compiles (it did when it was saved;
    a record no save made may not). Sends of a template that does not compile get an error
    reply naming it."""
    try:
        return await compile(data)
    except render.TemplateError:
        log.warning("template %s does not compile; sends using it are refused", key)
    except RenderPoolUnavailable:
        # Without renderer processes, compiling here keeps the templates sends need working.
        log.warning("template %s compiled in the worker: no renderer process", key)
        with contextlib.suppress(render.TemplateError, KeyError, TypeError):
            return render.compile_template(
                data.get("subject"), data["body"], html=is_html(str(data.get("type")))
            )
    except RenderPoolError as exc:
        log.error("template %s could not be compiled: %s", key, exc)
    return None


class TemplateCache:
    """Every template, by (name, language), kept current from the changelog topic."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        partitions: int,
        default_language: str,
        results_topic: str,
        compile: Compiler,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.partitions = partitions
        self.default_language = default_language
        self.results_topic = results_topic
        self.compile = compile
        self._entries: dict[str, CachedTemplate] = {}
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        # Keys deleted by this worker's view whose tombstone has not been read yet, with the
        # version deleted (see ``apply``).
        self._deleted: dict[str, int] = {}
        self.ready = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None

    # -- write results -----------------------------------------------------------------------
    def expect(self, request_id: str) -> asyncio.Future[dict[str, Any]]:
        """A future for the result of the write ``request_id``; call before sending it."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        return future

    def forget(self, request_id: str) -> None:
        self._waiting.pop(request_id, None)

    def _deliver_result(self, value: bytes | None) -> None:
        if not value:
            return
        result = codec.loads(value)
        future = self._waiting.pop(result.get("id", ""), None)
        if future is not None and not future.done():
            future.set_result(result)

    # -- reads -------------------------------------------------------------------------------
    def get(self, name: str, language: str | None = None) -> CachedTemplate | None:
        return self._entries.get(template_key(name, language or self.default_language))

    def resolve(self, name: str, language: str | None) -> CachedTemplate | None:
        """The template in the asked language, else in the default language (FlowX behaviour)."""
        found = self.get(name, language) if language else None
        return found or self.get(name, self.default_language)

    def all(self) -> list[dict[str, Any]]:
        return [entry.data for _, entry in sorted(self._entries.items())]

    def entries(self) -> list[CachedTemplate]:
        return [entry for _, entry in sorted(self._entries.items())]

    def __len__(self) -> int:
        return len(self._entries)

    # -- writes ------------------------------------------------------------------------------
    async def apply(self, key: str, value: bytes | None) -> None:
        """Apply one changelog record (None is a tombstone).

        A record older than what the map holds is skipped, so a write this worker's view
        applied at once (``apply_own``) is not undone by the changelog catching up a moment
        later. Likewise, after a delete applied at once, records up to the deleted version are
        skipped until the delete's own tombstone arrives: a tombstone carries no version, and
        without this the record before it would bring the template back for a moment.
        """
        if value is None:
            self._entries.pop(key, None)
            self._deleted.pop(key, None)
            return
        await self._set(key, codec.loads(value), own=False)

    async def apply_own(
        self,
        key: str,
        template: dict[str, Any] | None,
        draft: dict[str, Any] | None = None,
        rev: int = 0,
    ) -> None:
        """Apply a write this worker just made (``None``: a delete), ahead of the changelog."""
        if template is None:
            gone = self._entries.pop(key, None)
            # Not knowing the version (the map had not caught up yet), skip every record until
            # the tombstone: all of them are older than the delete.
            self._deleted[key] = gone.version if gone is not None else sys.maxsize
            return
        await self._set(key, {**template, DRAFT_FIELD: draft, REVISION_FIELD: rev}, own=True)

    async def _set(self, key: str, record: dict[str, Any], *, own: bool) -> None:
        data = {k: v for k, v in record.items() if not k.startswith("_")}  # private fields
        draft, rev = record.get(DRAFT_FIELD), revision(record)
        version = int(data.get("version", 0))
        if self._stale(key, version, rev, own):
            return
        current = self._entries.get(key)
        if current is None or current.version != version:
            compiled = await compile_stored(self.compile, key, data)
            # The map may have moved on while this version compiled.
            if self._stale(key, version, rev, own):
                return
            current = self._entries.get(key)
            if current is None or current.version != version:
                self._entries[key] = CachedTemplate(data, compiled, draft, rev)
                return
        # A draft saved or discarded: the published version, and its compiled form, stay.
        self._entries[key] = CachedTemplate(current.data, current.compiled, draft, rev)

    def _stale(self, key: str, version: int, rev: int, own: bool) -> bool:
        """Whether the map holds something newer than (version, rev), or deleted it. The
        version decides; the revision orders the writes of one version (drafts)."""
        deleted = self._deleted.get(key)
        if not own and deleted is not None and version <= deleted:
            return True
        current = self._entries.get(key)
        return current is not None and (
            version < current.version or (version == current.version and rev < current.revision)
        )

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
            results = TopicPartition(self.results_topic, 0)
            consumer.assign([*tps, results])
            await consumer.seek_to_beginning(*tps)
            await consumer.seek_to_end(results)
            await consumer.position(results)  # resolve "end" now: no result is missed later
            end = await consumer.end_offsets(tps)
            pending = {tp for tp in tps if end[tp] > 0}
            while True:
                if not pending and not self.ready.is_set():
                    log.info("template cache ready: %d templates", len(self._entries))
                    self.ready.set()
                batches = await consumer.getmany(timeout_ms=200, max_records=1000)
                for tp, records in batches.items():
                    for record in records:
                        try:
                            if tp == results:
                                self._deliver_result(record.value)
                            elif record.key is not None and self._at_home(record.key, tp):
                                await self.apply(record.key.decode(), record.value)
                        except (ValueError, TypeError, AttributeError):
                            # Only this service writes these topics, but a record it cannot
                            # read must not end the read model of every template.
                            log.error("%s/%d: unreadable record skipped", tp.topic, record.offset)
                for tp in list(pending):
                    if await consumer.position(tp) >= end[tp]:
                        pending.discard(tp)
        finally:
            await consumer.stop()

    def _at_home(self, key: bytes, tp: TopicPartition) -> bool:
        """Whether ``tp`` is the partition ``key`` belongs to. After a repartition a template's
        old copy (and then its tombstone) stays in its old partition, read in no fixed order
        with the new one; only the home partition's records count."""
        return partition_of(key, self.partitions) == tp.partition

    async def _wait_for_topic(self, consumer: AIOKafkaConsumer) -> None:
        """The changelog is created by Faust when the table starts (with the table's partition
        count, which Faust checks); wait for it to exist."""
        while not {self.topic, self.results_topic} <= await consumer.topics():
            await asyncio.sleep(0.2)
