"""A coroutine stepped at once, and carried on in a task only when it has to wait.

Faust's fetch loop delivers each record through ``LedgerConsumer.wait_first``, which steps the
delivery first (``app.runtime.eager``); these tests hold both to what awaiting the coroutine in
a task does: the same result, the same exception, a cancel seen where the coroutine waited.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mode import Service

from app.runtime import eager
from app.runtime.consumer import LedgerConsumer


async def test_a_coroutine_that_never_waits_finishes_in_its_first_step() -> None:
    ran_in = []

    async def deliver() -> int:
        ran_in.append(asyncio.current_task())
        return 42

    assert eager.start(deliver()) == eager.Finished(42)
    assert ran_in == [asyncio.current_task()]  # here, not in a task of its own


async def test_an_exception_of_the_first_step_is_raised_at_once() -> None:
    async def deliver() -> None:
        raise ValueError("bad record")

    with pytest.raises(ValueError, match="bad record"):
        eager.start(deliver())


async def test_a_coroutine_that_waits_goes_on_in_a_task_where_it_stopped() -> None:
    loop = asyncio.get_running_loop()
    first, second = loop.create_future(), loop.create_future()
    steps = []

    async def deliver() -> str:
        steps.append("start")
        a = await first
        steps.append(a)
        await asyncio.sleep(0)  # a bare yield
        b = await second
        steps.append(b)
        return a + b

    started = eager.start(deliver())
    assert isinstance(started, eager.CarryOn) and steps == ["start"]
    task = asyncio.ensure_future(started)
    await asyncio.sleep(0)
    first.set_result("x")
    await asyncio.sleep(0.01)
    assert steps == ["start", "x"] and not task.done()
    second.set_result("y")
    assert await task == "xy"
    assert steps == ["start", "x", "y"]


async def test_it_can_be_awaited_by_another_coroutine() -> None:
    loop = asyncio.get_running_loop()
    future = loop.create_future()

    async def deliver() -> int:
        return await future * 2

    async def outer() -> int:
        return await eager.start(deliver())  # type: ignore[misc]

    task = asyncio.ensure_future(outer())
    await asyncio.sleep(0)
    future.set_result(21)
    assert await task == 42


def blocked_delivery(seen: list[str]) -> Any:
    """A coroutine that waits for ever, and says how it ended."""
    never = asyncio.get_running_loop().create_future()

    async def deliver() -> None:
        try:
            await never
        except asyncio.CancelledError:
            seen.append("cancelled where it waited")
            raise
        finally:
            seen.append("finally")

    return deliver()


async def cancelled_coroutine() -> tuple[Any, list[str]]:
    seen: list[str] = []
    return eager.start(blocked_delivery(seen)), seen


async def test_a_cancel_while_it_waits_reaches_the_coroutine() -> None:
    started, seen = await cancelled_coroutine()
    task = asyncio.ensure_future(started)
    await asyncio.sleep(0)  # the task waits on the coroutine's future now
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == ["cancelled where it waited", "finally"]


async def test_a_cancel_before_the_task_ever_ran_reaches_the_coroutine_too() -> None:
    """A generator would not even start: the coroutine would hang where it waited."""
    started, seen = await cancelled_coroutine()
    task = asyncio.ensure_future(started)
    task.cancel()  # before its first step
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == ["cancelled where it waited", "finally"]


# -- any mix of waits, compared with awaiting the coroutine in a task -----------------------------
STEP = st.one_of(
    st.just(("yield",)),
    st.tuples(st.just("value"), st.integers()),
    st.tuples(st.just("error"), st.text(max_size=5)),
    st.just(("raise",)),
)


async def program(steps: list[tuple[Any, ...]], trace: list[Any]) -> list[Any]:
    loop = asyncio.get_running_loop()
    for step in steps:
        if step[0] == "yield":
            await asyncio.sleep(0)
            trace.append("yielded")
        elif step[0] == "value":
            future = loop.create_future()
            loop.call_soon(future.set_result, step[1])
            trace.append(await future)
        elif step[0] == "error":
            future = loop.create_future()
            loop.call_soon(future.set_exception, KeyError(step[1]))
            try:
                await future
            except KeyError as exc:
                trace.append(("caught", exc.args))
        else:
            raise LookupError(len(trace))
    return trace


async def outcome(run: Any) -> tuple[str, Any]:
    try:
        return "returned", await run
    except LookupError as exc:
        return "raised", exc.args


async def in_a_task(steps: list[tuple[Any, ...]], trace: list[Any]) -> Any:
    return await asyncio.ensure_future(program(steps, trace))


async def eagerly(steps: list[tuple[Any, ...]], trace: list[Any]) -> Any:
    started = eager.start(program(steps, trace))
    if isinstance(started, eager.Finished):
        return started.value
    return await asyncio.ensure_future(started)


@settings(max_examples=200, deadline=None)
@given(st.lists(STEP, max_size=8))
def test_any_mix_of_waits_ends_as_when_awaited_in_a_task(steps: list[tuple[Any, ...]]) -> None:
    plain: list[Any] = []
    stepped: list[Any] = []
    expected = asyncio.run(outcome(in_a_task(steps, plain)))
    got = asyncio.run(outcome(eagerly(steps, stepped)))
    assert got == expected
    assert stepped == plain


# -- LedgerConsumer.wait_first, as Faust's fetch loop calls it ------------------------------------
def consumer() -> LedgerConsumer:
    """Only what ``wait_first`` reads: a mode Service's stop and crash events."""
    made = LedgerConsumer.__new__(LedgerConsumer)
    Service.__init__(made)
    return made


async def test_a_delivery_that_never_waits_wins_and_the_suspend_wait_is_closed() -> None:
    suspend_flow = asyncio.Event()
    ran_in = []

    async def deliver() -> str:
        ran_in.append(asyncio.current_task())
        return "queued"

    delivery, suspended = deliver(), suspend_flow.wait()
    results = await consumer().wait_first(delivery, suspended)
    assert results.done == [delivery] and results.results == ["queued"]
    assert not results.stopped
    assert ran_in == [asyncio.current_task()]  # no task of its own
    assert inspect.getcoroutinestate(suspended) == inspect.CORO_CLOSED  # never "never awaited"


async def test_a_delivery_runs_in_a_context_of_its_own_as_in_a_task() -> None:
    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    loop = asyncio.get_running_loop()
    room = loop.create_future()

    async def deliver(wait: bool) -> str:
        token = var.set("set by the delivery")
        if wait:
            await room
        var.reset(token)  # in the same context after the wait, as in a task
        return var.get()

    assert (await consumer().wait_first(deliver(False), asyncio.Event().wait())).results == [
        "unset"
    ]
    waiting = asyncio.ensure_future(consumer().wait_first(deliver(True), asyncio.Event().wait()))
    await asyncio.sleep(0)
    room.set_result(None)
    assert (await waiting).results == ["unset"]
    assert var.get() == "unset"  # nothing leaked into the caller's context


async def test_a_delivery_that_waits_wins_as_the_coroutine_it_was() -> None:
    loop = asyncio.get_running_loop()
    room = loop.create_future()

    async def deliver() -> str:
        await room
        return "queued"

    delivery = deliver()
    waiting = asyncio.ensure_future(consumer().wait_first(delivery, asyncio.Event().wait()))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    room.set_result(None)
    results = await waiting
    assert results.done == [delivery] and results.results == ["queued"]


@pytest.mark.parametrize("already", [False, True], ids=["suspended-later", "suspended-already"])
async def test_a_blocked_delivery_is_abandoned_when_the_flow_is_suspended(already: bool) -> None:
    """The reason Faust waits on both: a full stream buffer must not hold a rebalance."""
    seen: list[str] = []
    suspend_flow = asyncio.Event()
    if already:
        suspend_flow.set()
    suspended = suspend_flow.wait()
    waiting = asyncio.ensure_future(consumer().wait_first(blocked_delivery(seen), suspended))
    await asyncio.sleep(0.01)
    suspend_flow.set()
    results = await waiting
    assert results.done == [suspended] and not results.stopped
    await asyncio.sleep(0)
    assert seen == ["cancelled where it waited", "finally"]


@pytest.mark.parametrize("event", ["_stopped", "_crashed"])
async def test_a_stopped_or_crashed_consumer_reports_stopped(event: str) -> None:
    ended = consumer()
    getattr(ended, event).set()

    async def deliver() -> str:
        return "queued"

    results = await ended.wait_first(deliver(), asyncio.Event().wait())
    assert results.stopped and results.done == []


async def test_a_consumer_stopping_while_a_delivery_waits_abandons_it() -> None:
    seen: list[str] = []
    stopping = consumer()
    waiting = asyncio.ensure_future(
        stopping.wait_first(blocked_delivery(seen), asyncio.Event().wait())
    )
    await asyncio.sleep(0.01)
    stopping._stopped.set()
    results = await waiting
    assert results.stopped
    await asyncio.sleep(0)
    assert seen == ["cancelled where it waited", "finally"]


async def test_an_exception_of_a_delivery_propagates_and_the_suspend_wait_is_closed() -> None:
    async def deliver() -> None:
        raise ValueError("undecodable")

    suspended = asyncio.Event().wait()
    with pytest.raises(ValueError, match="undecodable"):
        await consumer().wait_first(deliver(), suspended)
    assert inspect.getcoroutinestate(suspended) == inspect.CORO_CLOSED


async def test_any_other_call_is_modes_own() -> None:
    """One coroutine alone (``Service.wait``): run in a task of its own, as mode does."""
    ran_in = []

    async def work() -> int:
        ran_in.append(asyncio.current_task())
        return 7

    results = await consumer().wait_first(work())
    assert results.results == [7] and ran_in[0] is not asyncio.current_task()
    stopped = consumer()
    stopped._stopped.set()
    assert (await stopped.wait_first()).stopped  # no argument: waits for stop, as mode's
