"""The Kafka consumer the app runs: Faust's, with the commits of our source topics made exact.

Faust commits the offsets its streams acknowledge, and around rebalances it can commit past a
record that no agent handled (see ``app.offsets``). For the topics an ``OffsetLedger`` owns,
this consumer takes the committed position from the ledger instead: records are admitted in
offset order, starting at the group's committed offset once the partition is assigned and its
table recovered, and only a gap-free run of handled records is committed. Everything else
(table changelogs, the commit timer, the commit on revoke and on shutdown, the producer flush
before a commit) stays Faust's.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from mode import Service, ServiceT
from mode.services import WaitArgT, WaitResults

from app.offsets import Claim, OffsetLedger, Refusal
from app.runtime import eager
from app.runtime.recovery_guard import RecoveryGuard

log = logging.getLogger(__name__)
T = TypeVar("T")
# Seconds an admission may wait on the consumer thread (see ``_ask_thread``).
THREAD_CALL_TIMEOUT = 2.0
# Seconds between checks for a partition stuck behind a hole (see ``_watch_for_holes``).
HOLE_CHECK_INTERVAL = 2.0
# The code of ``suspend_flow.wait()`` (an asyncio.Event in Faust's consumer).
_EVENT_WAIT = asyncio.Event.wait.__code__


class _ReadOffsets(defaultdict):  # type: ignore[type-arg]
    """Faust's "last offset read" per partition, blind for ledger-owned topics.

    Faust's fetch loop drops any record below the last offset it read, and treats a jump as
    handled. After a re-read (``seek``) the rest of an earlier batch moves that mark forward
    again and the re-read records are dropped: the hole never fills. For ledger-owned topics
    the ledger does that filtering itself (duplicates are refused by offset), so Faust is told
    it has read nothing.
    """

    def __init__(self, owns: Callable[[str], bool]) -> None:
        super().__init__(lambda: None)
        self._owns = owns

    def __getitem__(self, tp: Any) -> Any:
        if self._owns(tp.topic):
            return None
        return super().__getitem__(tp)


def _is_delivery(coros: tuple[WaitArgT, ...]) -> bool:
    """The fetch loop's call: a coroutine and an ``asyncio.Event``'s wait, neither started."""
    return (
        len(coros) == 2
        and all(asyncio.iscoroutine(coro) for coro in coros)
        and getattr(coros[1], "cr_code", None) is _EVENT_WAIT
        and inspect.getcoroutinestate(coros[0]) == inspect.CORO_CREATED  # type: ignore[arg-type]
    )


def first_offsets(records: Mapping[Any, Any]) -> dict[Any, int]:
    """The first offset of each partition's records in a fetched batch."""
    return {tp: min(r.offset for r in batch) for tp, batch in records.items() if batch}


def seekable(partitions: Mapping[TP, int | None]) -> dict[TP, int]:
    """Offsets aiokafka accepts: a negative or unknown one is the partition's start."""
    return {
        tp: offset if isinstance(offset, int) and offset > 0 else 0
        for tp, offset in partitions.items()
    }


class LedgerConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer; partitions of ledger-owned topics commit from the ledger."""

    @property
    def ledger(self) -> OffsetLedger:
        return self.app.offset_ledger  # type: ignore[attr-defined,no-any-return]

    # Replaced (never mutated) on every seek, so a shared class-level default is safe.
    _seek_committed: Mapping[Any, int | None] = {}
    _rereads: set[asyncio.Future[None]]
    # This generation's partitions, kept from the rebalance that gave them: Faust's
    # ``assignment()`` builds a new set from aiokafka's on every call, and ``admit`` asks it
    # for every event (about 6% of a saturated worker's CPU). None between a revoke and the
    # next assignment, when the live one is asked.
    _owned: frozenset[TP] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rereads = set()
        self._read_offset = _ReadOffsets(lambda topic: self.ledger.owns(topic))

    # -- where a generation starts ------------------------------------------------------------
    async def seek_to_committed(self) -> Mapping[TP, int]:
        """Remember what the group had committed when Faust last positioned the partitions."""
        committed = await super().seek_to_committed()
        self._seek_committed = dict(committed)
        return committed

    async def seek_wait(self, partitions: Mapping[TP, int]) -> None:
        """Faust's table recovery can ask for an offset below -1 (a standby partition's
        "earliest - 1" when its earliest offset came back unknown): aiokafka refuses it with
        ``ValueError`` and the whole worker crashes. Such a partition is read from its start."""
        await super().seek_wait(seekable(partitions))

    async def _ask_thread(self, call: Awaitable[T]) -> T:
        """Bounded: while a rebalance runs, the consumer thread waits for the event we hold.

        Unbounded, that is a deadlock (the revoke waits for in-flight events, the event waits
        for the thread); timing out lets the event go, to be read again.
        """
        return await asyncio.wait_for(call, THREAD_CALL_TIMEOUT)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        """Faust waits for the events in flight and commits; then this generation is over."""
        self._owned = None
        try:
            await super().on_partitions_revoked(revoked)
        finally:
            self.ledger.reset()
            self._seek_committed = {}

    async def on_partitions_assigned(self, assigned: set[TP], generation_id: int = 0) -> None:
        """``assigned`` is the whole new assignment (Faust's assignor is eager)."""
        self._owned = frozenset(assigned)
        await super().on_partitions_assigned(assigned, generation_id)

    def owned(self) -> frozenset[TP] | set[TP]:
        """This worker's partitions (``assignment()``, without building a set per call)."""
        return self._owned if self._owned is not None else self.assignment()

    # -- how Faust hands a record to its streams ------------------------------------------------
    async def wait_first(self, *coros: WaitArgT, timeout: Any = None) -> WaitResults:
        """Faust's fetch loop delivers every record to its streams through
        ``wait_first(deliver(record), suspend_flow.wait())``, so that a delivery that blocks (a
        full stream buffer, a full producer buffer) can be abandoned when a rebalance suspends
        the flow. That is four tasks and an ``asyncio.wait`` a record (30 us, about 5% of a
        saturated worker), while a delivery almost never blocks. So, for that call only, the
        delivery takes its first step here, in a copy of the context as a task would: if that
        finishes it, nothing else can have happened meanwhile, and it is the winner (the
        suspend wait, never started, is closed); if it has to wait, it goes on in a task, where
        it stopped and in the same context, under mode's ``wait_first`` with the suspend wait,
        as before. The first step runs in the fetch loop's task, so it must not depend on
        having a task of its own (``current_task``, ``asyncio.timeout``); Faust's conductor,
        the delivery, does not. Any other call is mode's.
        """
        if not _is_delivery(coros):
            return await super().wait_first(*coros, timeout=timeout)
        delivery, flow_wait = coros
        context = contextvars.copy_context()
        try:
            started = context.run(eager.start, delivery)
        except BaseException:
            flow_wait.close()
            raise
        if isinstance(started, eager.Finished):
            flow_wait.close()
            if self._stopped.is_set() or self._crashed.is_set():
                return WaitResults([], [], True)
            return WaitResults([delivery], [started.value], False)
        task = asyncio.get_running_loop().create_task(started, context=context)
        waited = await super().wait_first(task, flow_wait, timeout=timeout)
        done = [delivery if winner is task else winner for winner in waited.done]
        return WaitResults(done, waited.results, waited.stopped)

    # -- records Faust would throw away ---------------------------------------------------------
    async def _wait_next_records(self, timeout: float) -> tuple[Any, Any]:
        """Faust's fetch, except that a batch Faust is about to discard is read again.

        A fetch still in flight when a rebalance stops the flow can return after table
        recovery has positioned the changelog partitions. Faust then drops the whole batch and
        seeks back to the committed offsets, which changelogs do not have: their records were
        never seen by the recovery, which waited for them forever (the recovery stall of
        ``make chaos``, about one run in thirty). Seeking each partition back to its first
        dropped record makes the next fetch return them again.
        """
        records, active = await super()._wait_next_records(timeout)
        if records and not self.flow_active:
            assigned = self.assignment()
            first = {tp: offset for tp, offset in first_offsets(records).items() if tp in assigned}
            if first:
                log.info("fetched while the flow was stopped, reading again: %s", first)
                try:
                    await self._ask_thread(self.seek_wait(first))
                except Exception:
                    log.warning("could not seek back to %s", first, exc_info=True)
            return {}, active
        return records, active

    # -- admission ------------------------------------------------------------------------------
    async def admit(self, message: Any) -> Claim | None:
        """A claim if ``message`` is to be handled now, else None (it will be read again).

        Nothing is admitted while a rebalance is running (Faust resumes its streams during
        table recovery, with events fetched in the previous generation still queued) nor for a
        partition this worker does not own any more.
        """
        tp = message.tp
        ledger = self.ledger
        if not self._open(tp) or not await self._ensure_started(tp):
            return None
        verdict = ledger.admit(tp, message.offset)
        if verdict is Refusal.HOLE and ledger.should_reread(tp, time.monotonic()):
            # In the background: this event is let go now (it will be read again).
            task = asyncio.ensure_future(self._reread(tp, message.offset))
            self._rereads.add(task)
            task.add_done_callback(self._rereads.discard)
        return verdict if isinstance(verdict, Claim) else None

    def _open(self, tp: TP) -> bool:
        return not self.app.rebalancing and tp in self.owned()

    async def _ensure_started(self, tp: TP) -> bool:
        """Start ``tp``'s generation at the group's committed offset unless it has one.

        False if the offset could not be read in time or the partition stopped being ours
        while it was read (a rebalance ran meanwhile).
        """
        if self.ledger.started(tp):
            return True
        try:
            await self._start_all([tp])
        except TimeoutError:
            return False
        return self._open(tp) and self.ledger.started(tp)

    async def _start_all(self, tps: list[TP]) -> None:
        """Start every partition in ``tps`` that has no generation yet, with one request.

        A partition nobody committed starts at its earliest offset, which only the broker
        knows. Asked one partition at a time (40 on a fresh deployment), each request waited
        behind the fetch's long poll in the consumer thread, and so did every commit: a commit
        at idle took a whole second ("Timer commit is overlapping") for the first minute.
        """
        waiting = [tp for tp in tps if not self.ledger.started(tp)]
        unknown = [tp for tp in waiting if self._known_start(tp) is None]
        # Nothing committed yet: the group starts at the beginning (auto_offset_reset).
        earliest = await self._ask_thread(self.earliest_offsets(*unknown)) if unknown else {}
        for tp in waiting:
            start = self._known_start(tp)
            start = earliest.get(tp) or 0 if start is None else start
            # Started meanwhile by another caller, or no longer ours after a rebalance: leave it.
            if self._open(tp) and not self.ledger.started(tp):
                self.ledger.start(tp, start)

    def _known_start(self, tp: TP) -> int | None:
        """The group's committed offset for ``tp`` if this consumer already knows it."""
        committed = self._seek_committed.get(tp)
        if committed is None:
            committed = self._committed_offset.get(tp)
        return None if committed is None or committed < 0 else committed

    async def _reread(self, tp: TP, arrived: int) -> None:
        """A record before ``arrived`` (an offset seen, or the fetch position) went missing."""
        expected = self.ledger.expected(tp)
        if expected is None:
            return
        try:
            earliest = (await self._ask_thread(self.earliest_offsets(tp))).get(tp) or 0
        except Exception:
            log.warning("%s: could not read the earliest offset", tp, exc_info=True)
            return
        if self.ledger.expected(tp) != expected:
            return  # the hole filled meanwhile, or the generation ended
        if expected < earliest:
            log.warning(
                "%s: offsets %d..%d were deleted by retention before being handled",
                tp,
                expected,
                earliest - 1,
            )
            self.ledger.skip_to(tp, earliest)
            return
        log.warning(
            "%s: offset %d went missing (seen up to %d); reading again from %d",
            tp,
            expected,
            arrived,
            expected,
        )
        try:
            # In the consumer's own thread: a plain ``seek`` from this one is not seen by the
            # fetcher. (Faust's "already read" filter is off for these topics, see _ReadOffsets.)
            await self._ask_thread(self.seek_wait({tp: expected}))
        except Exception:  # not assigned any more: the next owner starts from the commit
            log.warning("%s: could not seek back to %d", tp, expected, exc_info=True)

    @Service.task
    async def _watch_for_holes(self) -> None:
        """Re-read a partition whose fetch position ran ahead of the ledger and stays there.

        A record refused while a rebalance ran is read again only if a later one shows the
        hole, or if the partition is re-positioned; the last record before a quiet spell has
        neither. Ahead-and-stalled across two checks means a hole (or a stream blocked for
        that long, where a re-read costs only duplicates the ledger refuses).
        """
        stalled: dict[TP, int] = {}
        while not self.should_stop:
            await self.sleep(HOLE_CHECK_INTERVAL)
            if self.app.rebalancing:
                stalled = {}
                continue
            owned = [tp for tp in self.assignment() if self.ledger.owns(tp.topic)]
            with contextlib.suppress(Exception):  # timed out, or not ours: per partition below
                await self._start_all(owned)
            for tp in owned:
                if self.app.rebalancing:
                    continue
                try:
                    if not await self._ensure_started(tp):
                        continue
                    position = await self._ask_thread(self.position(tp))
                except Exception:
                    continue
                expected = self.ledger.expected(tp)
                if position is None or expected is None or position <= expected:
                    stalled.pop(tp, None)
                elif stalled.get(tp) != expected:
                    stalled[tp] = expected
                elif self.ledger.should_reread(tp, time.monotonic()):
                    await self._reread(tp, position)

    def committed_offsets(self) -> Mapping[TP, int]:
        """The offsets this consumer last committed, per partition (Faust's own record)."""
        return dict(self._committed_offset)

    def fetch_state(self, tp: TP) -> str:
        """Where fetching ``tp`` stands, for a log line about a partition that went quiet."""
        faust_state = (
            "paused"
            if tp in self._paused_partitions
            else "active"
            if tp in (self._active_partitions or ())
            else "not fetched"
        )
        try:
            assignment = self._thread._ensure_consumer()._subscription.subscription.assignment
            state = assignment.state_value(tp)
            fetcher = (
                f"position {state.position if state.has_valid_position else 'unset'}"
                f"{', paused' if state.paused else ''}"
            )
        except Exception as exc:  # internals of aiokafka: best effort only
            fetcher = f"unknown ({exc.__class__.__name__})"
        return f"{faust_state}, fetcher {fetcher}"

    # -- what Faust commits for ledger-owned partitions ---------------------------------------
    def _filter_tps_with_pending_acks(self, topics: Any = None) -> Iterator[TP]:
        seen = set()
        for tp in super()._filter_tps_with_pending_acks(topics):
            seen.add(tp)
            yield tp
        for tp in self.ledger.partitions():
            if tp not in seen and (topics is None or tp in topics or tp.topic in topics):
                yield tp

    def _new_offset(self, tp: TP) -> int | None:
        if not self.ledger.owns(tp.topic):
            return super()._new_offset(tp)
        # Faust's own list of acknowledged offsets is not used for these partitions.
        self._acked.pop(tp, None)
        self._acked_index.pop(tp, None)
        return self.ledger.committable(tp)

    async def _add_gap(self, tp: TP, offset_from: int, offset_to: int) -> None:
        # Faust treats a jump in fetched offsets as "handled"; the ledger never does.
        if not self.ledger.owns(tp.topic):
            await super()._add_gap(tp, offset_from, offset_to)


class LedgerApp(faust.App):
    """``faust.App`` to run with ``broker="ledger://..."``: its transport builds a
    :class:`LedgerConsumer` (see :class:`LedgerTransport`).

    ``offset_ledger`` names the topics whose commits the ledger decides; set it before the
    consumer is first used. With ``recovery_stall_seconds`` set, a ``RecoveryGuard`` runs from
    the start (services added with ``app.service`` only start after the first recovery, and the
    first one can stall too).
    """

    offset_ledger: OffsetLedger = OffsetLedger(())
    recovery_stall_seconds: float | None = None
    # The worker running this app (``app.runtime.worker.Worker`` sets it): the stall guard
    # stops it through ``fail``.
    running_worker: Any = None

    def on_init_dependencies(self) -> Iterable[ServiceT]:
        services = list(super().on_init_dependencies())
        if self.recovery_stall_seconds is not None and not (self.producer_only or self.client_only):
            services.append(RecoveryGuard(self, self.recovery_stall_seconds, loop=self.loop))
        return services


class LedgerTransport(faust_aiokafka.Transport):
    """Faust's aiokafka transport with our consumer; registered under the ``ledger://`` scheme
    through Faust's own extension point (the ``faust.transports`` entry points)."""

    Consumer = LedgerConsumer
