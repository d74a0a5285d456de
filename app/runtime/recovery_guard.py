"""Keeps a stalled table recovery from holding its partitions forever (see ``app.stall``)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from mode import Service

from app.runtime import recovery
from app.stall import StallAction, StallWatch

log = logging.getLogger(__name__)


class RecoveryStalled(RuntimeError):
    """Table recovery made no progress for too long; the worker gives its partitions up."""


class RecoveryGuard(Service):
    """Samples Faust's recovery every few seconds and acts on ``StallWatch``'s answer."""

    def __init__(self, app: Any, patience: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.app = app
        self.watch = StallWatch(patience)
        self.interval = min(5.0, patience / 3)
        self._gave_up = False

    @Service.task
    async def _sample(self) -> None:
        while not self.should_stop:
            await self.sleep(self.interval)
            try:
                await self.check(time.monotonic())
            except Exception:  # the guard must outlive any oddity of Faust's internals
                log.exception("recovery check failed")

    def behind(self) -> dict[Any, int]:
        """Applied offset of each changelog partition the running recovery still needs."""
        return recovery.behind(self.app)

    async def check(self, now: float) -> StallAction:
        behind = self.behind()
        action = self.watch.observe(now, behind)
        if action is StallAction.REREAD:
            log.error(
                "table recovery made no progress for %.0f s; reading again: %s",
                self.watch.stalled_for(now),
                self._describe(behind),
            )
            # Faust's own recovery seeks to the last applied offset (applying it twice is
            # harmless); -1 means nothing applied yet.
            positions = {tp: max(offset, 0) for tp, offset in behind.items()}
            try:
                await asyncio.wait_for(self.app.consumer.seek_wait(positions), self.interval)
            except Exception:
                log.warning("could not seek the stalled partitions", exc_info=True)
        elif action is StallAction.GIVE_UP and not self._gave_up:
            self._gave_up = True
            reason = RecoveryStalled(
                f"table recovery made no progress for {self.watch.stalled_for(now):.0f} s "
                f"({self._describe(behind)}); exiting so the group moves these partitions"
            )
            worker = self.app.running_worker
            if worker is None:
                log.critical("%s, but no worker to stop", reason)
            else:
                worker.fail(reason)
        return action

    def _describe(self, behind: dict[Any, int]) -> str:
        highwaters = recovery.highwaters(self.app)
        consumer = self.app.consumer  # a LedgerConsumer
        return "; ".join(
            f"{tp.topic}[{tp.partition}] applied up to {offset} of {highwaters.get(tp)} "
            f"({consumer.fetch_state(tp)})"
            for tp, offset in sorted(behind.items())
        )
