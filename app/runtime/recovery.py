"""What Faust's table recovery is doing, read from its non-public bookkeeping.

``app.tables.recovery`` keeps, per changelog partition being recovered, the last offset it
applied (``active_offsets``), the end it recovers to (``active_highwaters``) and what is left
(``active_remaining()``); none of these is documented API. Readiness, metrics and the stall
guard read them only through here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import faust
from faust.types import TP


def complete(app: faust.App) -> bool:
    """The first recovery finished, no rebalance is running and none is in progress."""
    recovery = app.tables.recovery
    return recovery.completed.is_set() and not app.rebalancing and not recovery.in_recovery


def behind(app: faust.App) -> dict[TP, int]:
    """Applied offset of each changelog partition the running recovery still needs."""
    recovery = app.tables.recovery
    if not recovery.in_recovery:
        return {}
    return {
        tp: recovery.active_offsets[tp]
        for tp, remaining in recovery.active_remaining().items()
        if remaining > 0
    }


def highwaters(app: faust.App) -> Mapping[TP, Any]:
    """The offset each partition in recovery is recovered up to."""
    return app.tables.recovery.active_highwaters
