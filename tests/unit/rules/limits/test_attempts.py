"""``CounterStore`` and ``Counts``: the in-process sliding-window counters of ``ConnectRate``.

Exact values on an injected time (the ``t`` argument, seconds), no guard,
no server. The arithmetic is ``limits``' sliding-window counter (weighted
count ``prev * (T - e) / T + curr``, admitted while below the limit), with
windows that start at a key's first attempt and counts that stop at the
limit (rules/limits/attempts.py). Windows and times are binary fractions
(0.25, 0.5, 4.0, ...), so every expected number is exact in floating point.
"""

from __future__ import annotations

from ws_guard.rules.limits.attempts import CounterStore, Counts
from ws_guard.rules.limits.rates import Rate

TWO_PER_4S = Rate(2, 4.0)


def test_counts_start_empty_and_chain_one_cell_per_rate() -> None:
    tail = Counts(8.0, None)
    head = Counts(8.0, tail)
    assert (head.start, head.idx, head.prev, head.curr, head.next) == (8.0, 0, 0, 0, tail)
    assert (tail.start, tail.idx, tail.prev, tail.curr, tail.next) == (8.0, 0, 0, 0, None)


def test_the_limit_admits_then_the_hint_is_the_rest_of_the_window() -> None:
    store = CounterStore((TWO_PER_4S,), max_keys=10)
    assert store.hit("a", 0.0) is None
    assert store.hit("a", 1.0) is None
    # Full: denied, and the hint is when the key's window (opened at 0) ends.
    assert store.hit("a", 1.5) == 2.5
    assert store.hit("a", 3.0) == 1.0  # a rejected attempt counts, but the count stops at 2
    assert len(store) == 1


def test_the_previous_window_weighs_in_by_its_share_still_inside_the_last_window() -> None:
    store = CounterStore((TWO_PER_4S,), max_keys=10)
    store.hit("a", 0.0)
    store.hit("a", 0.0)
    # 1 s into the next window: 2 * (4 - 1) / 4 = 1.5 < 2, admitted; curr 1.
    assert store.hit("a", 5.0) is None
    # 2 s in: 2 * 2 / 4 + 1 = 2, not below 2: denied; curr stops at 2, the
    # hint is the rest of this window (the next starts from prev = 2).
    assert store.hit("a", 6.0) == 2.0


def test_the_hint_with_room_left_is_when_the_weighted_count_falls_below_the_limit() -> None:
    store = CounterStore((Rate(4, 4.0),), max_keys=10)
    for _ in range(4):
        store.hit("a", 0.0)
    # 1 s into window 1: 4 * 3 / 4 + 0 = 3 < 4, admitted, curr 1.
    assert store.hit("a", 5.0) is None
    # 1.5 s in: 4 * 2.5 / 4 + 1 = 3.5 < 4, admitted, curr 2.
    assert store.hit("a", 5.5) is None
    # 1.75 s in: 4 * 2.25 / 4 + 2 = 4.25: denied, curr 3; the weighted count
    # falls below 4 once 4 * (4 - x) / 4 + 3 < 4, x > 3: in 3 - 1.75 = 1.25 s.
    assert store.hit("a", 5.75) == 1.25


def test_a_window_skipped_entirely_forgets_the_old_count() -> None:
    store = CounterStore((TWO_PER_4S,), max_keys=10)
    store.hit("a", 0.0)
    store.hit("a", 0.0)
    assert store.hit("a", 0.5) == 3.5
    # Window 2 (t in [8, 12)): window 1 had no attempt, so prev is 0.
    assert store.hit("a", 8.0) is None
    assert store.hit("a", 8.0) is None
    assert store.hit("a", 9.0) == 3.0


def test_every_rate_counts_and_the_longest_hint_wins() -> None:
    store = CounterStore((Rate(2, 1.0), Rate(3, 16.0)), max_keys=10)
    assert store.hit("a", 0.0) is None
    assert store.hit("a", 0.5) is None
    # Per second: full, hint 0.5. Per 16 s: 2 < 3 admits, the count reaches 3.
    assert store.hit("a", 0.75) == 15.25  # the 16 s window's rest, not the 1 s one's
    assert store.hit("a", 2.0) == 14.0  # the second is new; the 16 s window is full


def test_keys_are_counted_apart() -> None:
    store = CounterStore((TWO_PER_4S,), max_keys=10)
    store.hit("a", 0.0)
    store.hit("a", 0.0)
    assert store.hit("a", 1.0) == 3.0
    assert store.hit("b", 1.0) is None
    assert len(store) == 2


def test_a_key_lives_until_the_end_of_the_window_after_its_last_attempt() -> None:
    store = CounterStore((TWO_PER_4S,), max_keys=10)
    store.hit("a", 0.0)
    store.hit("a", 0.0)
    store.hit("b", 6.0)
    assert store.sweep(7.75) == 0  # a: window 1 still sees window 0's count
    assert store.sweep(8.0) == 1  # a: window 2 cannot see it any more
    assert len(store) == 1
    assert store.sweep(11.75) == 0  # b opened its windows at 6: alive until 14
    assert store.sweep(14.0) == 1
    assert len(store) == 0


def test_sweep_stops_at_the_first_live_key_in_order_of_last_attempt() -> None:
    store = CounterStore((TWO_PER_4S,), max_keys=10)
    store.hit("a", 0.0)
    store.hit("b", 0.0)
    store.hit("a", 6.0)  # a is used again: b is now the least recently used
    assert store.sweep(8.0) == 1  # b dropped; a (windows from 0, last at 6) lives on
    assert len(store) == 1
    assert store.hit("a", 8.0) is None  # its counters were kept: window 2 of its own


def test_an_expired_key_not_swept_yet_starts_its_windows_again() -> None:
    store = CounterStore((TWO_PER_4S,), max_keys=10)
    store.hit("a", 0.0)
    store.hit("a", 0.0)
    assert store.hit("a", 0.25) == 3.75
    # At 9 the old windows cannot matter: a fresh start at 9, as in Redis.
    assert store.hit("a", 9.0) is None
    assert store.hit("a", 9.5) is None
    assert store.hit("a", 10.0) == 3.0  # windows now end at 13, not at 12
    assert len(store) == 1


def test_max_keys_evicts_the_least_recently_used_and_counts_live_evictions() -> None:
    store = CounterStore((TWO_PER_4S,), max_keys=2)
    store.hit("a", 0.0)
    store.hit("b", 0.0)
    store.hit("a", 1.0)
    store.hit("c", 1.0)  # b is the oldest, and alive: evicted, counted
    assert len(store) == 2
    assert store.evicted == 1
    store.hit("d", 100.0)  # a is the oldest now, but long dead: dropped, not counted
    assert len(store) == 2
    assert store.evicted == 1
    # b's count went with its eviction: b starts again, admitted twice; c
    # (last attempt at 1) makes room for it, dead, so not counted either.
    assert store.hit("b", 100.0) is None
    assert store.hit("b", 100.0) is None
    assert len(store) == 2
    assert store.evicted == 1
