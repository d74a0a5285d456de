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
from app.core.partitions import partition_of
from app.core.templates import is_html, template_key
from app.flows.templates import DRAFT_FIELD, REVISION_FIELD, revision
from app.render_pool import RenderCrashed, RenderPoolError, RenderPoolUnavailable, RenderTimeout

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
    reply naming it.

    A renderer that ran over its limit or died is tried once more (a fresh one, on a machine
    perhaps less busy); a version left without its compiled form is compiled again with its
    next record (a draft saved, the row rewritten) or on the worker's next start.
    """
    try:
        return await compile(data)
    except render.TemplateError:
        log.warning("template %s does not compile; sends using it are refused", key)
        return None
    except RenderPoolUnavailable:
        # Without renderer processes, compiling here keeps the templates sends need working.
        log.warning("template %s compiled in the worker: no renderer process", key)
        with contextlib.suppress(render.TemplateError, KeyError, TypeError):
            return render.compile_template(
                data.get("subject"), data["body"], html=is_html(str(data.get("type")))
            )
        return None
    except (RenderTimeout, RenderCrashed) as exc:
        log.warning("template %s: %s; compiling it again", key, exc)
    try:  # once more, in a fresh renderer; never here, whatever happens to the renderers
        return await compile(data)
    except render.TemplateError:
        log.warning("template %s does not compile; sends using it are refused", key)
    except RenderPoolError as exc:
        log.error("template %s could not be compiled: %s", key, exc)
    return None


def _applier_ended(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("template cache: applying the changelog stopped", exc_info=task.exception())


#: Changelog records read and not yet applied, at most (the consumer waits past it).
CHANGES_QUEUED = 256


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
        # Of those, keys this worker's view has created again since (see ``apply``).
        self._recreated: set[str] = set()
        # One change of a key at a time: a version compiles across an await, during which a
        # tombstone or this worker's own write of that key would otherwise land first and be
        # undone by what the compile then installs.
        self._locks: dict[str, asyncio.Lock] = {}
        # Changelog records, applied by their own task: a compile waiting on a busy renderer
        # must not hold the write results every HTTP view waits for.
        self._changes: asyncio.Queue[tuple[str, bytes | None, str]] = asyncio.Queue(CHANGES_QUEUED)
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
        try:
            result = codec.loads_object(value)
        except ValueError:
            log.error("template results: an unreadable record skipped")
            return
        request_id = result.get("id")
        future = self._waiting.pop(request_id, None) if isinstance(request_id, str) else None
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
        async with self._lock(key):
            if value is None:
                if key in self._recreated:  # the tombstone of the template before it
                    self._recreated.discard(key)
                else:
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
        async with self._lock(key):
            if template is None:
                gone = self._entries.pop(key, None)
                # Not knowing the version (the map had not caught up yet), skip every record
                # until the tombstone: all of them are older than the delete.
                self._deleted[key] = gone.version if gone is not None else sys.maxsize
                return
            if key in self._deleted:
                # Re-created after this worker's delete, whose tombstone is still to come: it
                # ends the template before this one, not this one.
                self._recreated.add(key)
            record = {**template, DRAFT_FIELD: draft, REVISION_FIELD: rev}
            await self._set(key, record, own=True)

    def _lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    async def _set(self, key: str, record: dict[str, Any], *, own: bool) -> None:
        """Install a record (under the key's lock): compiled if its version is new here, or
        if this version's compile did not succeed before."""
        data = {k: v for k, v in record.items() if not k.startswith("_")}  # private fields
        draft, rev = record.get(DRAFT_FIELD), revision(record)
        version = int(data.get("version", 0))
        if self._stale(key, version, rev, own):
            return
        current = self._entries.get(key)
        if current is None or current.version != version or current.compiled is None:
            compiled = await compile_stored(self.compile, key, data)
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
            applier = asyncio.create_task(self._apply_changes(), name="template-cache-apply")
            applier.add_done_callback(_applier_ended)
            try:
                await self._tail(consumer, tps, results, end)
            finally:
                applier.cancel()
        finally:
            await consumer.stop()

    async def _tail(
        self,
        consumer: AIOKafkaConsumer,
        tps: list[TopicPartition],
        results: TopicPartition,
        end: dict[TopicPartition, int],
    ) -> None:
        pending = {tp for tp in tps if end[tp] > 0}
        readiness: asyncio.Task[None] | None = None
        try:
            while True:
                if not pending and readiness is None:
                    readiness = asyncio.create_task(self._ready_once_applied())
                batches = await consumer.getmany(timeout_ms=200, max_records=1000)
                for tp, records in batches.items():
                    for record in records:
                        if tp == results:
                            self._deliver_result(record.value)
                        elif record.key is not None and self._at_home(record.key, tp):
                            source = f"{tp.topic}/{tp.partition}/{record.offset}"
                            # Waits only past CHANGES_QUEUED records not yet applied (a
                            # start, a burst of imports): then results wait too.
                            await self._changes.put((record.key, record.value, source))
                for tp in list(pending):
                    if await consumer.position(tp) >= end[tp]:
                        pending.discard(tp)
        finally:
            if readiness is not None:
                readiness.cancel()

    async def _apply_changes(self) -> None:
        """Apply the changelog's records, in the order read, for as long as the cache runs."""
        while True:
            key, value, source = await self._changes.get()
            try:
                await self.apply(key.decode(), value)
            except Exception as exc:
                # Only this service writes the changelog, but a record it cannot read must not
                # end the read model of every template.
                log.error("%s: template record skipped (%s)", source, type(exc).__name__)
            finally:
                self._changes.task_done()

    async def _ready_once_applied(self) -> None:
        """``ready`` once every record up to the changelog's end at start is applied."""
        await self._changes.join()
        log.info("template cache ready: %d templates", len(self._entries))
        self.ready.set()

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
