"""Which offsets of a source partition may be committed: only a contiguous run of handled ones.

At-least-once means a committed offset promises that every record before it was handled. Faust
keeps that promise loosely: around rebalances it drops events it had queued, can hand a stream
an event fetched in the previous generation, and its commit bookkeeping then commits past a
record that was never handled (its gap check is off by one and skipped when the committed
offset is unknown). Under kill -9 and SIGTERM this lost about five requests in 2,000, one run
in four.

The ledger makes the promise exact and checkable. Per partition and per assignment generation
it starts at the group's committed offset and admits records strictly in offset order: the next
expected offset is handled, an offset already admitted is a duplicate, a later offset means a
record went missing in between (the caller re-reads from the missing one). Only the run of
admitted records that are all handled is committable. Plain Python, no Faust, tested directly.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field

# Seconds between two re-reads of the same partition: records after a hole keep arriving until
# the re-read takes effect, and each of them would otherwise ask for another one.
REREAD_INTERVAL = 1.0


class Refusal(enum.Enum):
    """Why a record is not handled now. None of these loses it: nothing past it is committed."""

    CLOSED = "rebalancing, or the partition is not ours"
    DUPLICATE = "already admitted in this generation"
    HOLE = "an earlier record has not arrived"


@dataclass(eq=False)
class Claim:
    """One admitted record; ``finish`` it once it is handled (replied to, table written)."""

    partition: _Partition
    offset: int
    handled: bool = False

    def finish(self) -> None:
        self.handled = True
        part = self.partition
        while part.claims and part.claims[0].handled:
            part.committable = part.claims.popleft().offset + 1


@dataclass(eq=False)
class _Partition:
    expected: int  # next offset to admit
    committable: int  # every offset below this one is handled
    claims: deque[Claim] = field(default_factory=deque)
    last_reread: float = float("-inf")


class OffsetLedger:
    """Per partition: admit in order, commit only what is handled without a gap."""

    def __init__(self, topics: Iterable[str]) -> None:
        self.topics = frozenset(topics)
        self._partitions: dict[Hashable, _Partition] = {}

    def owns(self, topic: str) -> bool:
        return topic in self.topics

    def started(self, tp: Hashable) -> bool:
        return tp in self._partitions

    def start(self, tp: Hashable, offset: int) -> None:
        """Begin a generation for ``tp`` at ``offset``: the group's committed position."""
        self._partitions[tp] = _Partition(expected=offset, committable=offset)

    def reset(self) -> None:
        """The generation ended (partitions revoked). Claims still running finish harmlessly."""
        self._partitions = {}

    def admit(self, tp: Hashable, offset: int) -> Claim | Refusal:
        part = self._partitions.get(tp)
        if part is None:
            return Refusal.CLOSED
        if offset < part.expected:
            return Refusal.DUPLICATE
        if offset > part.expected:
            return Refusal.HOLE
        part.expected += 1
        claim = Claim(part, offset)
        part.claims.append(claim)
        return claim

    def committable(self, tp: Hashable) -> int | None:
        part = self._partitions.get(tp)
        return None if part is None else part.committable

    def partitions(self) -> list[Hashable]:
        return list(self._partitions)

    def expected(self, tp: Hashable) -> int | None:
        part = self._partitions.get(tp)
        return None if part is None else part.expected

    def skip_to(self, tp: Hashable, offset: int) -> None:
        """Records below ``offset`` no longer exist (retention deleted them): nothing to handle."""
        part = self._partitions.get(tp)
        if part is None or offset <= part.expected:
            return
        part.expected = offset
        if not part.claims:
            part.committable = offset

    def should_reread(self, tp: Hashable, now: float) -> bool:
        """At most one re-read per partition per ``REREAD_INTERVAL``."""
        part = self._partitions.get(tp)
        if part is None or now - part.last_reread < REREAD_INTERVAL:
            return False
        part.last_reread = now
        return True
