"""Delivery that survives slow or failing providers: one helper shared by every channel.

A channel describes one *attempt* (an ``async`` function taking the seconds that attempt may
use); :class:`Delivery` runs it:

- **Budget.** Everything a message costs (waiting for a free slot, every attempt, every pause
  between attempts) fits in ``RetryPolicy.timeout`` seconds (``DELIVERY_TIMEOUT_SECONDS``).
  Each attempt runs under its own timeout, at most ``attempt_share`` of the budget (and never
  more than what is left), so a provider that never answers costs a bounded time and still
  leaves room for a second try on a fresh connection; the last attempt gets all that is left.
- **Retries.** Only failures marked ``transient`` (connection errors, timeouts, HTTP 408, 429
  and 5xx, SMTP 4xx) are retried, at most ``max_attempts`` times in all, with exponential
  backoff and full jitter (a random pause between 0 and ``base_delay * 2**(n-1)``, capped at
  ``max_delay``), so many workers retrying at once do not hit a recovering provider in step.
  A provider's ``Retry-After`` is a floor for the pause; if it lies beyond the budget we stop
  at once instead of sleeping for nothing.
- **Concurrency.** At most ``max_concurrency`` attempts run at once per provider (one
  semaphore per channel); pauses between attempts hold no slot.

The final :class:`DeliveryError` names the provider, the last status and the attempts made
(``fcm delivery failed: HTTP 503 after 3 attempts``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import TypeVar

from app.channels.base import DeliveryError

T = TypeVar("T")
log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_SECONDS = 15.0
DEFAULT_MAX_CONCURRENCY = 16


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try one message. ``timeout`` is ``DELIVERY_TIMEOUT_SECONDS``."""

    timeout: float = DEFAULT_TIMEOUT_SECONDS
    max_attempts: int = 5
    base_delay: float = 0.25
    max_delay: float = 4.0
    attempt_share: float = 1 / 3

    def backoff(self, attempt: int, rng: Callable[[], float] = random.random) -> float:
        """Full jitter: uniform in [0, min(max_delay, base_delay * 2**(attempt-1)))."""
        ceiling = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return rng() * ceiling

    def attempt_timeout(self, remaining: float, attempt: int) -> float:
        """Seconds attempt number ``attempt`` may take, ``remaining`` seconds being left."""
        if attempt >= self.max_attempts:
            return remaining
        return min(remaining, self.timeout * self.attempt_share)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delay-seconds or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


class Delivery:
    """Runs one provider's attempts within the budget, retrying transient failures."""

    def __init__(
        self,
        provider: str,
        policy: RetryPolicy,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        *,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.provider = provider
        self.policy = policy
        self.max_concurrency = max_concurrency
        self._slots = asyncio.Semaphore(max_concurrency)
        self._rng = rng
        self.attempts_made = 0

    async def run(self, attempt: Callable[[float], Awaitable[T]]) -> T:
        """Call ``attempt(seconds_allowed)`` until it returns, fails for good or time is up."""
        policy = self.policy
        loop = asyncio.get_running_loop()
        deadline = loop.time() + policy.timeout
        number = 0
        while True:
            number += 1
            try:
                return await self._once(attempt, deadline - loop.time(), number)
            except DeliveryError as exc:
                last = exc
            if not last.transient or number >= policy.max_attempts:
                raise self._final(last, number)
            pause = policy.backoff(number, self._rng)
            if last.retry_after is not None:
                if last.retry_after >= deadline - loop.time():
                    note = (
                        f"Retry-After {last.retry_after:g}s is beyond the "
                        f"{policy.timeout:g}s delivery budget"
                    )
                    raise self._final(last, number, note)
                pause = max(pause, last.retry_after)
            if pause >= deadline - loop.time():
                raise self._final(last, number)
            log.warning(
                "%s attempt %d failed (%s); retrying in %.2fs",
                self.provider,
                number,
                last.status,
                pause,
            )
            await asyncio.sleep(pause)

    async def _once(
        self, attempt: Callable[[float], Awaitable[T]], remaining: float, number: int
    ) -> T:
        if remaining <= 0:
            raise DeliveryError(self.provider, "timeout", transient=False)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with asyncio.timeout(remaining):
                await self._slots.acquire()
        except TimeoutError:
            raise DeliveryError(
                self.provider,
                f"no free delivery slot within {self.policy.timeout:g}s "
                f"({self.max_concurrency} deliveries already running)",
            ) from None
        try:
            self.attempts_made += 1
            allowed = self.policy.attempt_timeout(remaining - (loop.time() - started), number)
            async with asyncio.timeout(allowed):
                return await attempt(allowed)
        except TimeoutError:
            raise DeliveryError(self.provider, "timeout", transient=True) from None
        finally:
            self._slots.release()

    def _final(self, last: DeliveryError, attempts: int, note: str | None = None) -> DeliveryError:
        status = last.status
        if attempts > 1:
            status = f"{status} after {attempts} attempts"
        if note:
            status = f"{status} ({note})"
        return DeliveryError(last.provider, status, transient=last.transient)
