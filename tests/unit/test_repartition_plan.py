"""Where each key's row goes when the partition count changes, whatever a crash left behind."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from app.repartition import plan_key


def test_a_key_in_its_old_partition_moves_to_its_new_one():
    assert plan_key({1: b"row"}, home=5) == (b"row", [1])


def test_a_key_already_home_stays_as_it_is():
    assert plan_key({5: b"row"}, home=5) == (None, [])


def test_a_deleted_key_stays_deleted():
    assert plan_key({1: None}, home=5) == (None, [])


def test_after_a_crash_between_the_writes_and_the_tombstones_the_new_copy_decides():
    assert plan_key({1: b"row", 5: b"row"}, home=5) == (None, [1])


def test_after_a_finished_move_nothing_is_left_to_do():
    assert plan_key({1: None, 5: b"row"}, home=5) == (None, [])


copies = st.dictionaries(st.integers(0, 7), st.one_of(st.none(), st.binary(min_size=1)), max_size=4)


@given(copies, st.integers(0, 7))
def test_running_the_plan_then_planning_again_finds_nothing(last, home):
    """The command is safe to run twice: applying a plan leaves a key its second run skips,
    and a key live anywhere before is live at home after."""
    value, stale = plan_key(last, home)
    after = dict(last)
    if value is not None:
        after[home] = value
    for partition in stale:
        after[partition] = None
    assert plan_key(after, home) == (None, [])
    if any(v is not None for v in last.values()) and (home not in last or last[home]):
        assert after[home] is not None
