"""The Faust worker class the service runs, with a hard bound on shutdown time.

On SIGTERM Faust stops consuming, waits for the events in flight to be acknowledged
(``stream_wait_empty``), commits, flushes the producer and closes clients. Each of those waits
is bounded only loosely (a provider can take ``DELIVERY_TIMEOUT_SECONDS``, a broker can be
gone), and an orchestrator that sent SIGTERM expects the process gone within its grace period.
So a watchdog thread ends the process after ``SHUTDOWN_TIMEOUT_SECONDS``; whatever was not
committed by then is redelivered to the next owner of the partition (at-least-once).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from typing import Any

import faust
import mode.loop

from app.runtime.consumer import LedgerApp

log = logging.getLogger(__name__)


FORCED_EXIT_CODE = 3


def use_event_loop(name: str) -> None:
    """Make ``EVENT_LOOP`` the loop policy, before any loop exists.

    Importing Faust (this module does) applies its own ``--loop`` option, ``FAUST_LOOP`` or
    ``F_LOOP``; this runs after it, so the service's setting is the one that stays.
    """
    if name == "aio":
        asyncio.set_event_loop_policy(None)  # mode's "aio" keeps whatever policy is set
    else:
        mode.loop.use(name)


class Worker(faust.Worker):
    shutdown_timeout: float = 30.0
    _watchdog: threading.Timer | None = None

    def __init__(self, app: faust.App, *args: Any, **kwargs: Any) -> None:
        super().__init__(app, *args, **kwargs)
        if isinstance(app, LedgerApp):
            app.running_worker = self  # for ``fail`` (``RecoveryGuard``)

    def fail(self, reason: BaseException) -> None:
        """Stop as a failed process: the SIGTERM shutdown (bounded the same way), exit status 1.

        A status of 1 (mode re-raises ``crash_reason`` once the loop is closed) is what makes
        an orchestrator or ``restart: on-failure`` start the worker again.
        """
        log.critical("worker failing: %s", reason)
        self.crash_reason = reason
        self._schedule_shutdown(signal.SIGTERM)

    def _schedule_shutdown(self, signum: signal.Signals) -> None:
        if self._watchdog is None:
            self._watchdog = threading.Timer(self.shutdown_timeout, self._force_exit)
            self._watchdog.daemon = True
            self._watchdog.start()
        super()._schedule_shutdown(signum)

    def _force_exit(self) -> None:
        log.critical("shutdown took longer than %.0f s: exiting now", self.shutdown_timeout)
        logging.shutdown()
        os._exit(FORCED_EXIT_CODE)
