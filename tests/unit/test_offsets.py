"""The offset ledger: only a gap-free run of handled records is ever committable."""

from __future__ import annotations

from app.offsets import REREAD_INTERVAL, Claim, OffsetLedger, Refusal

TP = ("otp-commands", 3)


def started(at: int = 10) -> OffsetLedger:
    ledger = OffsetLedger(["otp-commands"])
    ledger.start(TP, at)
    return ledger


def test_owns_only_its_topics() -> None:
    ledger = OffsetLedger(["a", "b"])
    assert ledger.owns("a") and ledger.owns("b") and not ledger.owns("c")


def test_nothing_admitted_before_start_or_after_reset() -> None:
    ledger = OffsetLedger(["otp-commands"])
    assert ledger.admit(TP, 0) is Refusal.CLOSED
    ledger.start(TP, 0)
    assert isinstance(ledger.admit(TP, 0), Claim)
    ledger.reset()
    assert ledger.admit(TP, 1) is Refusal.CLOSED
    assert ledger.committable(TP) is None and ledger.partitions() == []


def test_admits_strictly_in_offset_order() -> None:
    ledger = started(10)
    assert ledger.admit(TP, 11) is Refusal.HOLE  # 10 went missing: not handled out of order
    first = ledger.admit(TP, 10)
    assert isinstance(first, Claim) and first.offset == 10
    assert ledger.admit(TP, 10) is Refusal.DUPLICATE  # the same record read again
    assert ledger.admit(TP, 9) is Refusal.DUPLICATE
    assert isinstance(ledger.admit(TP, 11), Claim)
    assert ledger.expected(TP) == 12


def test_commits_only_up_to_the_first_unhandled_record() -> None:
    ledger = started(10)
    claims = [ledger.admit(TP, offset) for offset in range(10, 15)]
    assert all(isinstance(c, Claim) for c in claims)
    assert ledger.committable(TP) == 10
    claims[2].finish()  # 12 done, 10 and 11 still running
    claims[4].finish()
    assert ledger.committable(TP) == 10
    claims[0].finish()
    assert ledger.committable(TP) == 11
    claims[1].finish()  # 10..12 done; 13 is not
    assert ledger.committable(TP) == 13
    claims[3].finish()
    assert ledger.committable(TP) == 15


def test_a_claim_of_an_ended_generation_does_not_move_the_new_one() -> None:
    ledger = started(10)
    old = ledger.admit(TP, 10)
    ledger.reset()
    ledger.start(TP, 10)  # the partition came back; the group had committed 10
    assert isinstance(old, Claim)
    old.finish()
    assert ledger.committable(TP) == 10


def test_skip_to_jumps_over_records_deleted_by_retention() -> None:
    ledger = started(10)
    ledger.skip_to(TP, 50)
    assert ledger.expected(TP) == 50 and ledger.committable(TP) == 50
    ledger.skip_to(TP, 40)  # never backwards
    assert ledger.expected(TP) == 50


def test_rereads_are_rate_limited_per_partition() -> None:
    ledger = started(10)
    assert ledger.should_reread(TP, now=100.0)
    assert not ledger.should_reread(TP, now=100.0 + REREAD_INTERVAL / 2)
    assert ledger.should_reread(TP, now=100.0 + REREAD_INTERVAL)
    assert not ledger.should_reread(("other", 0), now=100.0)
