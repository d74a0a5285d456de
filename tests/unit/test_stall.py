"""Stalled table recovery: re-read once after ``patience`` quiet seconds, give up after two."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP as TopicPartition

from app.runtime.recovery_guard import RecoveryGuard, RecoveryStalled
from app.stall import StallAction, StallWatch

A = ("otps-changelog", 0)
B = ("otps-changelog", 1)


def test_nothing_to_recover_is_never_a_stall() -> None:
    watch = StallWatch(10)
    assert all(watch.observe(t, {}) is StallAction.NONE for t in range(0, 200, 5))


def test_quiet_recovery_is_reread_once_then_given_up() -> None:
    watch = StallWatch(10)
    assert watch.observe(0, {A: 5}) is StallAction.NONE
    assert watch.observe(9.9, {A: 5}) is StallAction.NONE
    assert watch.observe(10, {A: 5}) is StallAction.REREAD
    assert watch.observe(15, {A: 5}) is StallAction.NONE  # once per stall
    assert watch.stalled_for(15) == 15
    assert watch.observe(20, {A: 5}) is StallAction.GIVE_UP


def test_any_movement_is_progress() -> None:
    watch = StallWatch(10)
    watch.observe(0, {A: 5, B: 7})
    assert watch.observe(9, {A: 6, B: 7}) is StallAction.NONE  # an offset moved
    assert watch.observe(18, {A: 6, B: 7}) is StallAction.NONE  # 9 s since then
    assert watch.observe(19, {A: 6}) is StallAction.NONE  # B caught up
    assert watch.observe(29, {A: 6}) is StallAction.REREAD
    assert watch.observe(30, {A: 7}) is StallAction.NONE  # the re-read worked
    assert watch.observe(40, {A: 7}) is StallAction.REREAD  # a new stall gets its own re-read


def test_recovery_ending_resets() -> None:
    watch = StallWatch(10)
    watch.observe(0, {A: 5})
    watch.observe(10, {A: 5})
    assert watch.observe(11, {}) is StallAction.NONE
    assert watch.observe(100, {A: 5}) is StallAction.NONE  # a new recovery, a new clock


def test_patience_must_be_positive() -> None:
    with pytest.raises(ValueError):
        StallWatch(0)


# -- the guard against Faust's recovery (its attributes, faked) -----------------------------------


class FakeConsumer:
    def __init__(self) -> None:
        self.seeks: list[dict[Any, int]] = []

    async def seek_wait(self, positions: dict[Any, int]) -> None:
        self.seeks.append(dict(positions))

    def fetch_state(self, tp: Any) -> str:
        return "active, fetcher position 0"


class FakeWorker:
    def __init__(self) -> None:
        self.failures: list[BaseException] = []

    def fail(self, reason: BaseException) -> None:
        self.failures.append(reason)


def fake_app(in_recovery: bool, offsets: dict[Any, int], highwaters: dict[Any, int]) -> Any:
    recovery = SimpleNamespace(
        in_recovery=in_recovery,
        active_offsets=offsets,
        active_highwaters=highwaters,
        active_remaining=lambda: {tp: highwaters[tp] - offsets[tp] for tp in highwaters},
    )
    return SimpleNamespace(
        tables=SimpleNamespace(recovery=recovery),
        consumer=FakeConsumer(),
        running_worker=FakeWorker(),
    )


TP = TopicPartition("otps-changelog", 4)
TP_DONE = TopicPartition("otps-changelog", 0)


async def test_guard_rereads_from_the_applied_offset_then_fails_the_worker() -> None:
    app = fake_app(True, {TP: -1, TP_DONE: 429}, {TP: 336, TP_DONE: 429})
    guard = RecoveryGuard(app, patience=3)
    assert guard.behind() == {TP: -1}  # caught-up partitions are not watched

    assert await guard.check(0) is StallAction.NONE
    assert await guard.check(3) is StallAction.REREAD
    assert app.consumer.seeks == [{TP: 0}]  # -1 (nothing applied) reads from the beginning
    assert app.running_worker.failures == []

    assert await guard.check(6) is StallAction.GIVE_UP
    assert await guard.check(7) is StallAction.GIVE_UP
    [reason] = app.running_worker.failures  # failed once
    assert isinstance(reason, RecoveryStalled)
    assert "otps-changelog[4] applied up to -1 of 336" in str(reason)


async def test_guard_ignores_a_finished_recovery() -> None:
    app = fake_app(False, {TP: -1}, {TP: 336})  # stale numbers of a recovery that is over
    guard = RecoveryGuard(app, patience=1)
    for t in range(10):
        assert await guard.check(t) is StallAction.NONE
    assert app.consumer.seeks == [] and app.running_worker.failures == []
