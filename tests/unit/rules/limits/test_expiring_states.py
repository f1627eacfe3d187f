"""``ExpiringStates``: per-key states made on first use and dropped once dead.

In process, with ``CountedWindow`` (the in-memory message-rate window) as the
state and explicit times in seconds. The import below is the one place this
file names the module that holds ``ExpiringStates``.
"""

from __future__ import annotations

from ws_guard.rules.limits.expiring import ExpiringStates
from ws_guard.rules.limits.leases import CountedWindow


def windows(made: list[str]) -> ExpiringStates[CountedWindow]:
    """States of 2 messages per 10 s; *made* records each key the factory is called for."""

    def factory(key: str) -> CountedWindow:
        made.append(key)
        return CountedWindow(2, 10.0)

    return ExpiringStates(10.0, factory)


def test_get_makes_a_state_once_per_key_and_peek_never_makes_one() -> None:
    made: list[str] = []
    states = windows(made)
    assert states.interval == 10.0
    assert states.peek("a") is None
    first = states.get("a", 0.0)
    assert states.get("a", 5.0) is first
    assert states.peek("a") is first
    assert states.peek("b") is None
    assert made == ["a"]
    assert len(states) == 1


def test_sweep_drops_only_dead_states_and_counts_them() -> None:
    made: list[str] = []
    states = windows(made)
    assert states.get("a", 0.0).take(0.0) is None  # window [0, 10)
    assert states.get("b", 4.0).take(4.0) is None  # window [4, 14)
    states.get("c", 4.0)  # made, never used: its window never opened
    assert states.sweep(9.5) == 1  # c only
    assert sorted(k for k in ("a", "b", "c") if states.peek(k) is not None) == ["a", "b"]
    assert states.sweep(10.0) == 1  # a's window ended at 10
    assert states.peek("a") is None
    assert states.sweep(13.9) == 0
    assert states.sweep(14.0) == 1
    assert len(states) == 0


def test_a_swept_key_gets_a_fresh_state_with_a_fresh_count() -> None:
    made: list[str] = []
    states = windows(made)
    old = states.get("a", 0.0)
    assert old.take(0.0) is None
    assert old.take(1.0) is None
    assert old.take(2.0) == 8.0  # denied until its window ends at 10
    assert states.sweep(10.0) == 1
    new = states.get("a", 10.0)
    assert new is not old
    assert made == ["a", "a"]
    assert new.take(10.0) is None


def test_values_is_a_snapshot_and_clear_forgets_every_key() -> None:
    made: list[str] = []
    states = windows(made)
    for key in ("a", "b", "c"):
        states.get(key, 0.0).take(0.0)
    snapshot = states.values()
    assert states.sweep(10.0) == 3  # the snapshot is not a live view of the dict
    assert [window.count for window in snapshot] == [1, 1, 1]
    states.get("d", 0.0)
    states.clear()
    assert len(states) == 0
    assert states.peek("d") is None


def test_a_burst_of_keys_is_freed_by_one_sweep_after_its_window() -> None:
    made: list[str] = []
    states = windows(made)
    for i in range(10_000):
        states.get(f"k{i}", 0.0).take(0.0)
    states.get("late", 9.0).take(9.0)
    assert states.sweep(10.0) == 10_000
    assert len(states) == 1
    assert states.peek("late") is not None
