"""The shared retry helper: budget, backoff, Retry-After, permanent failures, concurrency."""

from __future__ import annotations

import asyncio
import time
from email.utils import formatdate

import pytest

from app.channels.base import DeliveryError
from app.channels.retry import Delivery, RetryPolicy, parse_retry_after
from tests.fakes.notifications import fast_policy


def test_parse_retry_after_seconds_and_http_date():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0 ") == 0.0
    now = time.time()
    assert parse_retry_after(formatdate(now + 10, usegmt=True), now=now) == pytest.approx(10, 1)
    assert parse_retry_after(formatdate(now - 10, usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-5") is None
    assert parse_retry_after(None) is None


def test_backoff_is_full_jitter_capped():
    policy = RetryPolicy(base_delay=0.5, max_delay=3.0)
    assert [policy.backoff(n, lambda: 1.0) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert policy.backoff(4, lambda: 0.0) == 0.0
    assert 0 <= policy.backoff(3) <= 2.0


def test_attempt_timeout_leaves_room_for_a_retry_but_last_gets_all():
    policy = RetryPolicy(timeout=15, max_attempts=3, attempt_share=1 / 3)
    assert policy.attempt_timeout(15, 1) == pytest.approx(5)
    assert policy.attempt_timeout(2, 2) == 2
    assert policy.attempt_timeout(9, 3) == 9


def failing(*errors: DeliveryError, result: str = "sent"):
    """An attempt that raises the given errors in turn, then returns ``result``."""
    calls: list[float] = []

    async def attempt(timeout: float) -> str:
        calls.append(time.monotonic())
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return result

    return attempt, calls


async def test_transient_failures_are_retried_until_success():
    attempt, calls = failing(
        DeliveryError("p", "HTTP 503", transient=True),
        DeliveryError("p", "HTTP 502", transient=True),
    )
    assert await Delivery("p", fast_policy()).run(attempt) == "sent"
    assert len(calls) == 3


async def test_permanent_failure_is_not_retried():
    attempt, calls = failing(DeliveryError("p", "HTTP 400 (bad)"))
    with pytest.raises(DeliveryError) as err:
        await Delivery("p", fast_policy()).run(attempt)
    assert str(err.value) == "p delivery failed: HTTP 400 (bad)" and len(calls) == 1


async def test_gives_up_after_max_attempts_naming_the_count():
    attempt, calls = failing(*[DeliveryError("p", "HTTP 503", transient=True)] * 10)
    with pytest.raises(DeliveryError) as err:
        await Delivery("p", fast_policy(max_attempts=3)).run(attempt)
    assert str(err.value) == "p delivery failed: HTTP 503 after 3 attempts"
    assert len(calls) == 3 and err.value.transient


async def test_a_hanging_provider_is_bounded_by_the_budget_and_retried():
    calls = []

    async def hang(timeout: float) -> None:
        calls.append(timeout)
        await asyncio.Event().wait()

    started = time.monotonic()
    with pytest.raises(DeliveryError) as err:
        await Delivery("p", fast_policy(timeout=1.2)).run(hang)
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 1.2 + 0.5, elapsed
    assert str(err.value).startswith("p delivery failed: timeout after ")
    assert len(calls) >= 2 and calls[0] == pytest.approx(0.4, abs=0.05)


async def test_retry_after_is_a_floor_for_the_pause():
    attempt, calls = failing(DeliveryError("p", "HTTP 429", transient=True, retry_after=0.6))
    await Delivery("p", fast_policy()).run(attempt)
    assert calls[1] - calls[0] >= 0.6


async def test_retry_after_beyond_the_budget_stops_at_once():
    attempt, calls = failing(DeliveryError("p", "HTTP 429", transient=True, retry_after=60))
    started = time.monotonic()
    with pytest.raises(DeliveryError) as err:
        await Delivery("p", fast_policy(timeout=2)).run(attempt)
    assert time.monotonic() - started < 0.5 and len(calls) == 1
    assert str(err.value) == (
        "p delivery failed: HTTP 429 (Retry-After 60s is beyond the 2s delivery budget)"
    )


async def test_concurrency_is_bounded_per_provider():
    delivery = Delivery("p", fast_policy(), max_concurrency=2)
    running, peak = 0, 0

    async def attempt(timeout: float) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.05)
        running -= 1

    await asyncio.gather(*(delivery.run(attempt) for _ in range(8)))
    assert peak == 2


async def test_waiting_for_a_slot_counts_against_the_budget():
    delivery = Delivery("p", fast_policy(timeout=0.6), max_concurrency=1)

    async def hang(timeout: float) -> None:
        await asyncio.Event().wait()

    started = time.monotonic()
    results = await asyncio.gather(delivery.run(hang), delivery.run(hang), return_exceptions=True)
    assert time.monotonic() - started < 1.0
    assert all(isinstance(r, DeliveryError) for r in results)
