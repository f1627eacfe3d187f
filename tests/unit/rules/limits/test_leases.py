"""``CountedWindow``, ``LeaseBook`` and ``LeasedWindow``: the message-rate windows, in process.

``CountedWindow`` needs nothing but times (seconds). A ``LeasedWindow`` takes
its quota from a Redis counter in leases, so those tests run against the real
``redis-server`` fixture, on asyncio (the lease task is an asyncio task), with
the guard's injected clock; a lease is awaited (``settle``), never slept on.
Redis' own clock only sets a window's end when Redis opens the window; the
tests that depend on it bound it by the window they asked for.
"""

from __future__ import annotations

import logging

import pytest

from tests.support.redis_server import RedisServer
from ws_guard import Guard
from ws_guard.rules.limits.leases import STORAGE_DOWN, CountedWindow, LeaseBook, LeasedWindow
from ws_guard.testing import ManualClock

KEY = "ws_guard:test:msg:{rule|alice}:0"


# -- CountedWindow: this process's own count -----------------------------------


def test_a_counted_window_opens_at_the_first_message_and_admits_its_limit() -> None:
    window = CountedWindow(3, 10.0)
    assert not window.alive(0.0)
    assert window.take(5.0) is None
    assert window.end == 15.0
    assert window.alive(14.5)
    assert not window.alive(15.0)
    assert window.take(6.0) is None
    assert window.take(7.0) is None
    assert window.count == 3
    assert window.take(7.5) == 7.5  # denied: the window frees at 15
    assert window.count == 3  # a denied message is not counted


def test_a_counted_window_starts_again_at_the_first_message_after_its_end() -> None:
    window = CountedWindow(1, 10.0)
    assert window.take(0.0) is None
    assert window.take(9.0) == 1.0
    assert window.take(12.0) is None  # a new window [12, 22), not [10, 20)
    assert window.end == 22.0
    assert window.take(21.0) == 1.0


# -- LeasedWindow on a real Redis ------------------------------------------------


async def settle(window: LeasedWindow) -> None:
    """Wait for the window's lease requests, including one a reply starts."""
    while window.task is not None:
        await window.task


async def started(redis: RedisServer, clock: ManualClock, **options: object) -> Guard:
    guard = Guard(storage=redis.url, clock=clock, **options)  # type: ignore[arg-type]
    await guard.startup()
    return guard


def counter(redis: RedisServer) -> bytes:
    return redis.command("GET", KEY)


@pytest.mark.redis
async def test_leases_start_at_one_double_and_stop_at_the_limit(redis: RedisServer) -> None:
    clock = ManualClock(0.0)
    guard = await started(redis, clock)
    book = LeaseBook(guard)
    window = LeasedWindow(book, KEY, limit=5, window=10.0, max_lease=4)
    try:
        # First message: no allowance yet, admitted on debt; the request
        # charges the debt and asks for a lease of 1 (INCRBY 2).
        assert window.take(0.0) is None
        assert (window.debt, window.used, window.allowance) == (1, 1, 0)
        await settle(window)
        assert counter(redis) == b"$1\r\n2\r\n"
        assert (window.debt, window.allowance, window.lease) == (0, 1, 2)
        assert window.end == 10.0  # started at 0; the script set the new window's 10 s
        # The last unit of allowance is at most half a lease: the next lease
        # (2) is asked for in the background, the message is not held. Time
        # stands still from here: each reply sets the end to the request's
        # start plus Redis' PTTL, which runs on Redis' (real) clock.
        assert window.take(0.0) is None
        await settle(window)
        assert counter(redis) == b"$1\r\n4\r\n"
        assert (window.allowance, window.lease) == (2, 4)
        assert 9.0 < window.end <= 10.0
        assert window.take(0.0) is None  # allowance 1 <= 4 // 2: asks for 4 more
        await settle(window)
        # Redis had 4 of 5 given out: it grants 1 of the 4, and the window is spent.
        assert counter(redis) == b"$1\r\n8\r\n"
        assert window.exhausted
        assert window.allowance == 2
        assert window.take(0.0) is None
        assert window.take(0.0) is None
        assert window.used == 5
        assert window.task is None  # an exhausted window asks Redis nothing more
        assert window.take(0.0) == window.end  # denied until the window's end
        assert window.take(0.5) == window.end - 0.5
    finally:
        await book.close()
        await guard.shutdown()


@pytest.mark.redis
async def test_two_processes_share_the_limit_through_redis(redis: RedisServer) -> None:
    clock = ManualClock(0.0)
    guards = [await started(redis, clock), await started(redis, clock)]
    books = [LeaseBook(guard) for guard in guards]
    windows = [LeasedWindow(book, KEY, limit=4, window=10.0, max_lease=2) for book in books]
    try:
        admitted = 0
        for t in range(12):
            for window in windows:
                if window.take(float(t) / 4) is None:
                    admitted += 1
                await settle(window)
        # A message admitted on debt is paid before anything is granted, so
        # with every request answered before the next message nothing overshoots.
        assert admitted == 4
        assert all(window.exhausted for window in windows)
    finally:
        for book in books:
            await book.close()
        for guard in guards:
            await guard.shutdown()


@pytest.mark.redis
async def test_a_process_alone_never_admits_more_than_the_limit(redis: RedisServer) -> None:
    clock = ManualClock(0.0)
    guard = await started(redis, clock)
    book = LeaseBook(guard)
    window = LeasedWindow(book, KEY, limit=3, window=10.0, max_lease=8)
    try:
        # A burst faster than any reply: all on debt, but never past the limit.
        assert [window.take(0.0) for _ in range(5)] == [None, None, None, 10.0, 10.0]
        await settle(window)
        assert window.used == 3
        assert window.debt == 0
        # The first request (debt 1, lease 1) was sent before the burst: INCRBY 2.
        # The reply starts the next one for the rest of the debt (2) and a lease
        # of 2: INCRBY 4, of which Redis grants 1; the window is spent.
        assert counter(redis) == b"$1\r\n6\r\n"
        assert window.exhausted
    finally:
        await book.close()
        await guard.shutdown()


@pytest.mark.redis
async def test_a_window_already_spent_elsewhere_denies_after_prime(redis: RedisServer) -> None:
    clock = ManualClock(50.0)
    guard = await started(redis, clock)
    book = LeaseBook(guard)
    window = LeasedWindow(book, KEY, limit=3, window=10.0, max_lease=2)
    try:
        assert redis.command("SET", KEY, "3", "PX", "6000") == b"+OK\r\n"
        assert await window.prime()
        assert window.exhausted
        assert 55.0 < window.end <= 56.0  # Redis' remaining 6 s, read just now
        hint = window.take(50.0)
        assert hint is not None
        assert 5.0 < hint <= 6.0
        assert counter(redis) == b"$1\r\n3\r\n"  # prime only reads
        assert await window.prime()  # the window is known now: no second read
    finally:
        await book.close()
        await guard.shutdown()


@pytest.mark.redis
async def test_prime_of_an_unspent_window_leaves_the_first_message_to_lease(
    redis: RedisServer,
) -> None:
    clock = ManualClock(0.0)
    guard = await started(redis, clock)
    book = LeaseBook(guard)
    window = LeasedWindow(book, KEY, limit=3, window=10.0, max_lease=2)
    try:
        assert await window.prime()
        assert not window.exhausted
        assert redis.command("EXISTS", KEY) == b":0\r\n"  # no window opened by a read
        assert window.take(0.0) is None
        await settle(window)
        assert counter(redis) == b"$1\r\n2\r\n"
    finally:
        await book.close()
        await guard.shutdown()


@pytest.mark.redis
@pytest.mark.parametrize(("policy", "answer"), [("allow", None), ("deny", STORAGE_DOWN)])
async def test_a_failed_lease_pauses_requests_and_the_policy_decides(
    own_redis: RedisServer,
    policy: str,
    answer: float | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock(0.0)
    guard = await started(own_redis, clock, on_storage_error=policy)
    book = LeaseBook(guard, retry=1.0)
    window = LeasedWindow(book, KEY, limit=5, window=10.0, max_lease=2)
    try:
        own_redis.kill()
        assert window.take(0.0) is None  # on debt: the failure is not known yet
        await settle(window)
        assert guard.metrics.snapshot().storage_errors == 1
        assert window.failed_until == 1.0
        assert window.debt == 0  # nothing to charge to a Redis that never heard of it
        assert any(
            r.levelno == logging.WARNING and "message rate lease failed" in r.getMessage()
            for r in caplog.records
        )
        assert window.take(0.5) == answer  # within the pause: no request, the policy
        assert window.task is None
        assert window.used == (2 if policy == "allow" else 1)
        assert not await window.prime()  # a handshake's read fails too, and says so
        assert guard.metrics.snapshot().storage_errors == 2
    finally:
        await book.close()
        await guard.shutdown()


@pytest.mark.redis
async def test_after_the_pause_a_lease_is_asked_for_again(own_redis: RedisServer) -> None:
    clock = ManualClock(0.0)
    guard = await started(own_redis, clock)
    book = LeaseBook(guard, retry=1.0)
    window = LeasedWindow(book, KEY, limit=5, window=10.0, max_lease=2)
    try:
        own_redis.kill()
        assert window.take(0.0) is None
        await settle(window)
        own_redis.start()
        clock.now = 1.0
        assert window.take(1.0) is None  # the pause is over: on debt, and asked
        await settle(window)
        assert window.failed_until == float("-inf")
        assert own_redis.command("GET", KEY) == b"$1\r\n2\r\n"
        assert window.allowance == 1
    finally:
        await book.close()
        await guard.shutdown()


@pytest.mark.redis
async def test_close_cancels_the_requests_in_flight(redis: RedisServer) -> None:
    clock = ManualClock(0.0)
    guard = await started(redis, clock)
    book = LeaseBook(guard)
    window = LeasedWindow(book, KEY, limit=5, window=10.0, max_lease=2)
    try:
        assert window.take(0.0) is None
        task = window.task
        assert task is not None
        assert book.tasks == {task}
        await book.close()
        assert task.cancelled()
        assert book.tasks == set()
        assert redis.command("EXISTS", KEY) == b":0\r\n"  # cancelled before it was sent
    finally:
        await guard.shutdown()


@pytest.mark.redis
async def test_a_reply_for_an_ended_window_changes_nothing_of_the_new_one(
    redis: RedisServer,
) -> None:
    clock = ManualClock(0.0)
    guard = await started(redis, clock)
    book = LeaseBook(guard)
    window = LeasedWindow(book, KEY, limit=5, window=10.0, max_lease=2)
    try:
        assert window.take(0.0) is None  # request for window 1 in flight
        clock.now = 10.0
        assert window.take(10.0) is None  # window 2 opens locally before the reply
        assert window.epoch == 2
        assert window.debt == 1  # window 1's debt went with it
        await settle(window)
        # The stale reply (INCRBY 2) changes nothing of window 2; window 2's
        # debt is then asked for in a request of its own (INCRBY 2). Redis'
        # clock has not moved, so both land in the one Redis window.
        assert counter(redis) == b"$1\r\n4\r\n"
        assert window.debt == 0
        assert window.allowance == 1
        assert 19.0 < window.end <= 20.0
    finally:
        await book.close()
        await guard.shutdown()
