"""Stream processors. Each agent is thin: parse, call the core, write its table, reply."""

from __future__ import annotations

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
