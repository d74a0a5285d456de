"""Stream processors. Each agent is thin: parse, call the core, write its table, reply."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)


async def for_each_event(stream: Any, handle: Callable[[Any], Awaitable[None]]) -> None:
    """Run ``handle`` on every event, acknowledging it only once ``handle`` has finished.

    Faust acks an event in a ``finally`` around its ``yield``, so an agent cancelled in the
    middle of an event (worker shutdown, rebalance) would still have that event's offset
    committed and the request would be lost. With acks taken over here, an interrupted event
    stays unacknowledged and is delivered again: at-least-once, as promised.
    """
    stream.enable_acks = False
    async for event in stream.events():
        await handle(event)
        await stream.ack(event)


class KeyedDispatcher:
    """Handle events concurrently across keys and strictly in order within one key.

    A generate request waits seconds on a mail server or an SMS API; handled one after the
    other, one slow provider would stall every request behind it. Each event becomes a task,
    chained after the previous task of the same key (so one identifier's generate, validate
    and expire stay in order).

    Events are acknowledged in offset order per partition, once they and every event before
    them are handled. Faust's own bookkeeping of out-of-order acks commits past a missing
    offset in some cases (its gap check is off by one, and skipped at offset 0), which lost
    requests on restart in our tests; handing it only contiguous acks avoids that code path.

    The task inherits the stream's context, in which Faust's ``current_event`` is the event it
    handles, so table writes from the task go to that event's partition, as Faust requires.
    """

    def __init__(self, max_in_flight: int) -> None:
        self._slots = asyncio.Semaphore(max_in_flight)
        self._tails: dict[Any, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # Per partition, events in offset order with a "handled" flag: acked from the front.
        self._pending: dict[Any, deque[list[Any]]] = {}

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def dispatch(
        self, stream: Any, event: Any, handle: Callable[[Any], Awaitable[None]]
    ) -> None:
        await self._slots.acquire()  # back-pressure: the stream waits when too much is in flight
        key = event.key
        entry = [event, False]
        self._pending.setdefault(event.message.tp, deque()).append(entry)
        task = asyncio.create_task(self._run(self._tails.get(key), stream, entry, handle))
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
        entry: list[Any],
        handle: Callable[[Any], Awaitable[None]],
    ) -> None:
        event = entry[0]
        try:
            if previous is not None:
                await asyncio.wait([previous])
            try:
                await handle(event)
            except Exception:
                # Handlers answer their own failures; one that cannot even do that must not
                # hold back every later offset of its partition (and block rebalances).
                log.exception("event %s/%s left unanswered", event.message.tp, event.message.offset)
            entry[1] = True
            pending = self._pending[event.message.tp]
            while pending and pending[0][1]:
                await stream.ack(pending.popleft()[0])
        finally:
            self._slots.release()
