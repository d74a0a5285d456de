"""Stream processors. Each agent is thin: parse, call the core, write its table, reply."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any


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
    and expire stay in order), and acknowledged when it finishes: Faust commits an offset only
    up to the first unacknowledged event, so nothing is committed before it was handled.

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
        self, stream: Any, event: Any, handle: Callable[[Any], Awaitable[None]]
    ) -> None:
        await self._slots.acquire()  # back-pressure: the stream waits when too much is in flight
        key = event.key
        task = asyncio.create_task(self._run(self._tails.get(key), stream, event, handle))
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
        event: Any,
        handle: Callable[[Any], Awaitable[None]],
    ) -> None:
        try:
            if previous is not None:
                await asyncio.wait([previous])
            await handle(event)
            await stream.ack(event)
        finally:
            self._slots.release()
