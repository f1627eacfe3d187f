"""ConnectRate's sliding-window counter: exact at its edges, bounded in keys and bytes.

The window arithmetic is checked on the counter store with exact clock
values (binary fractions, so the weighted counts are exact), and through the
rule with an injected clock; the memory bound under tracemalloc.
"""

from __future__ import annotations

import functools
import gc
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from tests.support.rate_helpers import Clock
from ws_guard import ConfigurationError, Guard, rules
from ws_guard._core.connection import Connection
from ws_guard.rules.limits.attempts import CounterStore
from ws_guard.rules.limits.connect_rate import DEFAULT_MAX_KEYS
from ws_guard.rules.limits.rates import parse_rates
from ws_guard.types import Message

#: The documented bound (docs/rate-limits.md): bytes per tracked key, key string included.
BYTES_PER_KEY_BOUND = 300


def store(rate: str, max_keys: int = 1000) -> CounterStore:
    return CounterStore(parse_rates(rate), max_keys)


def test_a_burst_fills_the_window_and_the_hint_is_the_window_end() -> None:
    s = store("10/minute")
    assert [s.hit("a", 1000.0) for _ in range(10)] == [None] * 10
    assert s.hit("a", 1000.0) == 60.0  # the window started at the first attempt
    assert s.hit("a", 1030.0) == 30.0
    assert s.hit("b", 1030.0) is None  # other keys are untouched


def test_the_previous_window_weighs_by_its_share_still_inside_the_last_minute() -> None:
    def history() -> CounterStore:
        s = store("10/minute")
        for _ in range(5):
            assert s.hit("a", 0.0) is None
        # 90 s: half of the previous window (5 attempts) still counts, 2.5; the
        # current window admits while 2.5 + curr < 10, so exactly 8 more.
        assert [s.hit("a", 90.0) for _ in range(8)] == [None] * 8
        # The ninth: curr is now 9, so the next is admitted once 5 * (60 - e) / 60
        # < 1, after e = 48 s, 18 s from now.
        assert s.hit("a", 90.0) == pytest.approx(18.0)
        return s

    # Exactly at the hint the weighted count is the limit itself (5 * 12/60 + 9): refused.
    assert history().hit("a", 108.0) is not None
    # Just after it: 5 * 11.75/60 + 9 = 9.98, in.
    assert history().hit("a", 108.25) is None


def test_the_edge_between_windows_is_exact() -> None:
    s = store("2/minute")
    assert s.hit("a", 0.0) is None
    assert s.hit("a", 0.0) is None
    assert s.hit("a", 59.5) == 0.5  # still the first window: 2 >= 2
    # 60 s: the previous window (capped at 2) weighs fully: 2 * 60 / 60 = 2, refused.
    assert s.hit("a", 60.0) is not None
    # 90 s: the window 60-120 holds that refused attempt: 2 * 0.5 + 1 = 2, refused.
    assert s.hit("a", 90.0) is not None
    # 120 s: the previous window's count is 2 (one refused, one more now): full weight.
    assert s.hit("a", 120.0) is not None
    quiet = store("2/minute")
    assert quiet.hit("a", 0.0) is None
    assert quiet.hit("a", 0.0) is None
    assert quiet.hit("a", 60.25) is None  # 2 * 59.75/60 = 1.99 < 2: the edge decays at once


def test_a_quiet_window_clears_the_key() -> None:
    s = store("2/minute")
    for _ in range(5):
        s.hit("a", 0.0)
    # Two windows later the counts no longer matter; the key starts again.
    assert s.sweep(119.999) == 0
    assert s.sweep(120.0) == 1
    assert len(s) == 0
    assert [s.hit("a", 120.0) for _ in range(2)] == [None, None]


def test_a_hammering_client_gets_at_most_one_attempt_per_window() -> None:
    """Refused attempts count (up to the limit), so hammering does not pay."""
    s = store("3/minute")
    for _ in range(3):
        assert s.hit("a", 0.0) is None
    admitted = [t for k in range(600) if s.hit("a", t := k + 0.5) is None]
    # An attempt a second for ten minutes: only the first after each window
    # edge gets in (the previous window's count, capped at 3, decays from its
    # start), then the refused ones fill the window again.
    assert admitted == [60.0 * w + 0.5 for w in range(1, 10)]
    # A pause to just after the next edge is enough to be admitted.
    assert s.hit("a", 600.25) is None


def test_several_rates_all_apply_and_the_hint_is_the_longest_wait() -> None:
    s = store("2/second; 3/minute")
    assert s.hit("a", 0.0) is None
    assert s.hit("a", 0.0) is None
    # 2/second is full (1 s); the refused attempt counts in 3/minute too, which
    # is now full until its window ends: the hint is the longer wait.
    assert s.hit("a", 0.0) == 60.0
    assert s.hit("a", 1.5) == 58.5  # 2/second admits again; 3/minute does not


def test_eviction_drops_the_least_recently_used_key_first() -> None:
    s = store("1/minute", max_keys=3)
    for key in ("a", "b", "c"):
        assert s.hit(key, 0.0) is None
    assert s.hit("a", 1.0) == 59.0  # "a" is limited, and now the most recent key
    assert s.hit("d", 2.0) is None  # over the bound: "b", the least recent, goes
    assert len(s) == 3
    assert s.evicted == 1
    assert s.hit("b", 3.0) is None  # "b" starts again ("c" goes)
    assert s.hit("a", 4.0) == 56.0  # the limited key kept its count
    assert s.hit("c", 5.0) is None
    assert s.evicted == 3


def test_expired_keys_leave_without_counting_as_evictions() -> None:
    s = store("1/minute", max_keys=2)
    s.hit("a", 0.0)
    s.hit("b", 0.0)
    s.hit("c", 500.0)  # "a" expired long ago: dropped, not evicted
    assert s.evicted == 0
    assert len(s) == 2


async def test_a_limited_key_survives_a_flood_of_other_keys_under_the_bound() -> None:
    """Through the rule: 50 new addresses leave a limited one limited; 100 evict it."""
    clock = Clock(0.0)
    rule = rules.ConnectRate("2/minute", max_keys=100)
    guard = Guard(rules=[rule], clock=clock)
    await guard.startup()

    async def attempt(ip: str) -> str:
        close = await rule.admit(connection(guard, ip))
        return "open" if close is None else close.wire_reason

    assert [await attempt("10.0.0.1") for _ in range(3)] == [
        "open",
        "open",
        "connect_rate_limited; retry-after=60",
    ]
    for i in range(50):
        clock.now = 1.0 + i / 100
        assert await attempt(f"10.1.0.{i}") == "open"
    clock.now = 2.0
    assert await attempt("10.0.0.1") == "connect_rate_limited; retry-after=58"
    for i in range(100):  # 10.0.0.1 becomes the least recently used of 101 keys
        clock.now = 3.0 + i / 100
        assert await attempt(f"10.2.0.{i}") == "open"
    assert rule.evicted == 51
    assert len(rule._counters or ()) == 100
    assert await attempt("10.0.0.1") == "open"
    await guard.shutdown()


async def _receive() -> Message:
    return {"type": "websocket.connect"}


async def _send(message: Message) -> None:
    return None


def connection(guard: Guard, ip: str) -> Connection:
    scope = {"type": "websocket", "path": "/ws", "client": (ip, 40000), "headers": []}
    return Connection(guard, scope, _receive, _send)


@pytest.mark.parametrize("rate", ["10/minute", "10000/day"])
async def test_bytes_per_key_stay_under_the_documented_bound(rate: str) -> None:
    """Memory per key does not grow with the limit (the attempt log kept `limit` times)."""
    keys = 20_000
    clock = Clock(1e6)  # a clock far from zero, as a monotonic clock on a long-up host
    rule = rules.ConnectRate(rate, max_keys=keys)
    guard = Guard(rules=[rule], clock=clock)
    await guard.startup()
    conn = functools.partial(connection, guard)
    try:
        assert await rule.admit(conn("192.0.2.1")) is None  # warm up before measuring
        gc.collect()
        tracemalloc.start()
        try:
            start = tracemalloc.get_traced_memory()[0]
            for i in range(keys):
                clock.now = 1e6 + i / 1000
                assert await rule.admit(conn(f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}")) is None
            gc.collect()
            used = tracemalloc.get_traced_memory()[0] - start
        finally:
            tracemalloc.stop()
        assert len(rule._counters or ()) == keys
        assert used / keys < BYTES_PER_KEY_BOUND, f"{used / keys:.0f} bytes per key"
    finally:
        await guard.shutdown()


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "100"])
def test_max_keys_must_be_a_positive_integer(value: object) -> None:
    with pytest.raises(
        ConfigurationError, match=f"max_keys must be a positive integer, not {value!r}"
    ):
        rules.ConnectRate("1/minute", max_keys=value)  # type: ignore[arg-type]


def test_the_default_bound() -> None:
    assert rules.ConnectRate("1/minute").max_keys == DEFAULT_MAX_KEYS == 100_000


def test_the_memory_benchmark_runs_and_reports_under_the_bound() -> None:
    """benchmarks/connect_rate_memory.py, on a few keys: the figures in the docs come from it."""
    script = Path(__file__).resolve().parents[4] / "benchmarks" / "connect_rate_memory.py"
    done = subprocess.run(
        [sys.executable, str(script), "--keys", "2000", "--rate", "10000/day"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rate, keys, tracked, per_key = done.stdout.splitlines()[1].split()
    assert (rate, keys, tracked) == ("10000/day", "2000", "2000")
    assert int(per_key) < BYTES_PER_KEY_BOUND
