"""Stream processors. Each agent is thin: parse, call the core, write its table, reply."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from app import records
from app.flows import Headers, Inbound, Route
from app.offsets import Claim
from tables import Topics

log = logging.getLogger(__name__)


def inbound(event: Any) -> Inbound:
    """The handler's view of a Faust event: the record as it was on the topic."""
    message = event.message
    return Inbound(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        key=message.key,
        value=message.value,
        # The message's own list: Faust's ``event.headers`` is a dict, which merges repeats.
        headers=records.header_list(message.headers),
        timestamp=message.timestamp,
    )


class TopicOutbox:
    """The flows' :class:`~app.flows.Outbox` over this app's Faust topics.

    Records go to the app's producer directly. ``Topic.send`` wraps each one in a
    ``FutureMessage``, runs Faust's send sensors and callbacks on it, and cost as much again as
    aiokafka's own send (py-spy); nothing here reads any of that. The guarantee is the same:
    Faust flushes the producer before it commits, so a record sent here reaches the broker
    before the offset of the record that caused it is committed.
    """

    def __init__(self, app: Any, topics: Topics) -> None:
        self._app = app
        self._names = {route: getattr(topics, route.value).get_topic_name() for route in Route}

    async def send(
        self, route: Route, key: bytes | None, value: bytes | None, headers: Headers
    ) -> None:
        producer = self._app.producer
        if not producer.started:  # as Topic.send does: a view may send before the app starts it
            await self._app.maybe_start_producer()
        await producer.send(self._names[route], key, value, None, None, headers)


Admit = Callable[[Any], Awaitable[Claim | None]]


def survive(sweep: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """A timer body that logs its failure instead of raising: Faust stops the whole worker
    when a timer raises, and a sweep that fails (the broker away a moment) can wait for the
    next interval."""

    async def run() -> None:
        try:
            await sweep()
        except Exception:
            log.exception("%s failed; trying again at the next interval", sweep.__name__)

    run.__name__ = run.__qualname__ = sweep.__name__
    return run


async def for_each_event(
    stream: Any, admit: Admit, handle: Callable[[Any], Awaitable[None]]
) -> None:
    """Handle every admitted event in order; its offset becomes committable once handled.

    ``admit`` (the app consumer's) refuses events fetched before a rebalance, duplicates and
    events that overtook a missing one; those are read again, so skipping them loses nothing.
    Faust's own acks only release the event (shutdown and rebalances wait for that): an agent
    cancelled in the middle of an event leaves it uncommitted, to be delivered again.
    """
    stream.enable_acks = False
    async for event in stream.events():
        claim = await admit(event.message)
        if claim is not None:
            try:
                await handle(event)
            except Exception:
                # Handlers answer their own failures; one that cannot must still let the
                # partition's later offsets be committed (as ``KeyedDispatcher`` does).
                log.exception("event %s/%s left unanswered", event.message.tp, event.message.offset)
            claim.finish()
        await stream.ack(event)


async def dispatch_each(
    stream: Any,
    dispatcher: KeyedDispatcher,
    admit: Admit,
    handle: Callable[[Inbound], Awaitable[None]],
) -> None:
    """Hand every event to ``dispatcher`` (concurrent across keys); each is acked by its task."""
    stream.enable_acks = False
    async for event in stream.events():
        await dispatcher.dispatch(stream, admit, event, lambda e: handle(inbound(e)))


class KeyedDispatcher:
    """Handle events concurrently across keys and strictly in order within one key.

    A generate request waits seconds on a mail server or an SMS API; handled one after the
    other, one slow provider would stall every request behind it. Each admitted event becomes a
    task, chained after the previous task of the same key (so one identifier's generate,
    validate and expire stay in order). Offsets are committed only up to the first event not
    yet handled (``app.offsets``), however the tasks finish.

    The task inherits the stream's context, in which Faust's ``current_event`` is the event it
    handles, so table writes from the task go to that event's partition, as Faust requires.
    """

    def __init__(self, max_in_flight: int) -> None:
        self._slots = asyncio.Semaphore(max_in_flight)
        self._tails: dict[Any, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def dispatch(
        self, stream: Any, admit: Admit, event: Any, handle: Callable[[Any], Awaitable[None]]
    ) -> None:
        claim = await admit(event.message)
        if claim is None:
            await stream.ack(event)
            return
        await self._slots.acquire()  # back-pressure: the stream waits when too much is in flight
        key = event.key
        task = asyncio.create_task(self._run(self._tails.get(key), stream, claim, event, handle))
        self._tails[key] = task
        self._tasks.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._tasks.discard(finished)
            if self._tails.get(key) is finished:
                del self._tails[key]

        task.add_done_callback(done)

    async def _run(
        self,
        previous: asyncio.Task[None] | None,
        stream: Any,
        claim: Claim,
        event: Any,
        handle: Callable[[Any], Awaitable[None]],
    ) -> None:
        try:
            if previous is not None:
                await asyncio.wait([previous])
            try:
                await handle(event)
            except Exception:
                # Handlers answer their own failures; one that cannot even do that must not
                # hold back every later offset of its partition (and block rebalances).
                log.exception("event %s/%s left unanswered", event.message.tp, event.message.offset)
            claim.finish()
            await stream.ack(event)
        finally:
            self._slots.release()
