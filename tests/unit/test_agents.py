"""The agents' own helpers (the streams themselves are tested against the broker)."""

from __future__ import annotations

import asyncio

import pytest

from agents import survive


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
