"""When a table recovery has stopped making progress, and what to do about it.

Faust restores a worker's tables from their changelogs before it answers anything, and waits
for that without a time limit. A recovery that stops receiving changelog records holds its
partitions forever: the worker keeps heartbeating, so the group never moves them, and every
request routed there goes unanswered. The one cause we found (Faust dropping a batch fetched as
a rebalance stopped the flow) is fixed in ``app.runtime.consumer``; this covers whatever else
can stop a recovery. Two remedies, the second only if the first fails: read the stalled
partitions again from where recovery stands, then give the partitions up by exiting (the group
hands them to the other workers; the orchestrator restarts this one).

Pure: the caller samples the recovery's position and acts on the answer.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Mapping


class StallAction(enum.Enum):
    NONE = "none"
    REREAD = "reread"
    GIVE_UP = "give_up"


class StallWatch:
    """Follows recovery positions; a stall is ``patience`` seconds with no position moving.

    ``observe`` gets the applied offset of every partition still behind (empty when nothing is
    being recovered). Any change (an offset moves, a partition catches up, another one starts
    recovering) is progress and starts the clock again.
    """

    def __init__(self, patience: float) -> None:
        if patience <= 0:
            raise ValueError("patience must be positive")
        self.patience = patience
        self._last: dict[Hashable, int] = {}
        self._since = 0.0
        self._reread = False

    def observe(self, now: float, behind: Mapping[Hashable, int]) -> StallAction:
        if dict(behind) != self._last:
            self._last = dict(behind)
            self._since = now
            self._reread = False
            return StallAction.NONE
        if not behind:
            return StallAction.NONE
        stalled = now - self._since
        if stalled >= 2 * self.patience:
            return StallAction.GIVE_UP
        if stalled >= self.patience and not self._reread:
            self._reread = True
            return StallAction.REREAD
        return StallAction.NONE

    def stalled_for(self, now: float) -> float:
        return now - self._since if self._last else 0.0
