"""Run a coroutine's first step at once, and hand it to a task only if it has to wait.

Python 3.12 has this as the tasks' ``eager_start``; the service runs on 3.11. Faust's fetch
loop wraps every record's delivery in a task (see ``LedgerConsumer.wait_first``), although a
delivery that has to wait is the rare case; stepping it here first saves the task in the
common one.
"""

from __future__ import annotations

from collections.abc import Coroutine, Generator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Finished:
    """The coroutine ran to its end in its first step."""

    value: Any


def start(coro: Coroutine[Any, Any, Any]) -> Finished | CarryOn:
    """Step ``coro`` once: its result if it finished, else a coroutine that carries it on.

    An exception from the first step propagates here, as awaiting ``coro`` would raise it. The
    coroutine returned must be run by a task (or awaited by a coroutine a task runs), as
    ``coro`` itself would have been.
    """
    try:
        awaited = coro.send(None)
    except StopIteration as stop:
        return Finished(stop.value)
    return CarryOn(coro, awaited)


class CarryOn(Coroutine[Any, Any, Any]):
    """``coro``, which stopped at ``awaited`` (the future it waits for, or None for a bare
    yield such as ``asyncio.sleep(0)``), as a coroutine a task can run on from there.

    The task's first step is handed ``awaited``, so it waits for it as if ``coro`` had yielded
    it to the task; every later step goes to ``coro``. A class rather than a generator: an
    exception thrown into a task before its first step (a cancel while it was scheduled) never
    enters a generator's body, and would leave ``coro`` hanging where it waited; here it is
    thrown into ``coro`` there, as a cancel of the task it ran in would have been.
    """

    def __init__(self, coro: Coroutine[Any, Any, Any], awaited: Any) -> None:
        self._coro = coro
        self._awaited = awaited
        self._handed = False

    def send(self, value: Any) -> Any:
        if not self._handed:
            self._handed = True
            return self._awaited
        return self._coro.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        self._handed = True
        if val is None and tb is None:
            return self._coro.throw(typ)
        return self._coro.throw(typ, val, tb)  # the 3-argument form, as a caller gave it

    def close(self) -> None:
        self._handed = True
        self._coro.close()

    def __next__(self) -> Any:
        return self.send(None)

    def __iter__(self) -> CarryOn:
        return self

    def __await__(self) -> Generator[Any, Any, Any]:
        # The awaiting coroutine steps this object itself, with send, throw and close.
        return self  # type: ignore[return-value]
