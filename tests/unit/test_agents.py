"""The agents' own helpers (the streams themselves are tested against the broker)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from agents import KeyedDispatcher, survive


def test_a_failing_sweep_is_logged_not_raised(caplog: pytest.LogCaptureFixture):
    calls: list[int] = []

    async def sweep_things() -> None:
        calls.append(1)
        raise ConnectionError("broker away")

    guarded = survive(sweep_things)
    assert guarded.__name__ == "sweep_things"  # Faust names the timer after it
    asyncio.run(guarded())
    asyncio.run(guarded())
    assert calls == [1, 1] and "sweep_things failed" in caplog.text


# -- KeyedDispatcher ----------------------------------------------------------------------------
class Claim:
    def __init__(self, log: list[str], name: str) -> None:
        self.log, self.name = log, name

    def finish(self) -> None:
        self.log.append(f"finished {self.name}")


class Stream:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def ack(self, event: Any) -> None:
        self.log.append(f"acked {event.name}")


def event(key: bytes, name: str) -> Any:
    return SimpleNamespace(key=key, name=name, message=SimpleNamespace(tp="t/0", offset=name))


def dispatching(log: list[str], max_in_flight: int = 10) -> tuple[KeyedDispatcher, Stream, Any]:
    async def admit(message: Any) -> Claim:
        return Claim(log, message.offset)

    return KeyedDispatcher(max_in_flight), Stream(log), admit


async def test_one_key_in_order_and_other_keys_alongside() -> None:
    """A waits on its provider; A's next event waits for it, B's does not."""
    log: list[str] = []
    dispatcher, stream, admit = dispatching(log)
    provider = asyncio.get_running_loop().create_future()

    async def handle(e: Any) -> None:
        if e.name == "a1":
            await provider
        log.append(f"handled {e.name}")

    for key, name in ((b"a", "a1"), (b"a", "a2"), (b"b", "b1")):
        await dispatcher.dispatch(stream, admit, event(key, name), handle)
    for _ in range(3):
        await asyncio.sleep(0)
    assert log == ["handled b1", "finished b1", "acked b1"]
    assert dispatcher.in_flight == 2
    provider.set_result(None)
    for _ in range(10):
        await asyncio.sleep(0)
    assert log[3:] == [
        "handled a1",
        "finished a1",
        "acked a1",
        "handled a2",
        "finished a2",
        "acked a2",
    ]
    assert dispatcher.in_flight == 0


async def test_a_failing_handler_still_lets_its_offset_be_committed() -> None:
    log: list[str] = []
    dispatcher, stream, admit = dispatching(log)

    async def handle(e: Any) -> None:
        raise RuntimeError("no reply possible")

    await dispatcher.dispatch(stream, admit, event(b"a", "1"), handle)
    for _ in range(3):
        await asyncio.sleep(0)
    assert log == ["finished 1", "acked 1"]


async def test_the_slots_hold_back_the_stream_and_come_back() -> None:
    log: list[str] = []
    dispatcher, stream, admit = dispatching(log, max_in_flight=1)
    provider = asyncio.get_running_loop().create_future()

    async def handle(e: Any) -> None:
        if e.name == "1":
            await provider
        log.append(f"handled {e.name}")

    await dispatcher.dispatch(stream, admit, event(b"a", "1"), handle)
    await asyncio.sleep(0)
    second = asyncio.ensure_future(dispatcher.dispatch(stream, admit, event(b"b", "2"), handle))
    await asyncio.sleep(0.01)
    assert not second.done() and log == []  # one slot, taken by the waiting handler
    provider.set_result(None)
    await second
    for _ in range(5):
        await asyncio.sleep(0)
    assert log == ["handled 1", "finished 1", "acked 1", "handled 2", "finished 2", "acked 2"]
    # every slot came back
    for name in ("3", "4", "5"):
        await asyncio.wait_for(dispatcher.dispatch(stream, admit, event(b"c", name), handle), 1)
