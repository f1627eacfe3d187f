"""``load.Gauge`` and ``load.ConnectionCount`` at their edges, in process on an injected clock.

A sync-looking ``read`` (a lambda, a method) can still return an awaitable.
Awaiting it at admission would put the user's I/O on the handshake path, so
the gauge turns async on the spot: that handshake is judged on the last
sample, the awaitable is closed (no "never awaited" warning) and from then
on only ``sample()`` reads it.
"""

from __future__ import annotations

import asyncio
import re

import anyio

from tests.support.apps import echo
from tests.support.backends import asyncio_only
from tests.support.helpers import handshake_outcome
from ws_guard import Guard, WSGuardMiddleware, load
from ws_guard.testing import ManualClock as Clock

OVERLOADED = re.compile(r"overloaded; retry-after=\d+(?:\.\d)?")


async def handshake(guard: Guard) -> dict[str, object]:
    """Connect; the close ws_guard sent, or the accept (then leave)."""
    return await handshake_outcome(WSGuardMiddleware(echo, guard=guard))


async def test_a_sync_read_returning_a_coroutine_turns_the_gauge_async() -> None:
    reads: list[float] = []

    async def depth() -> float:
        reads.append(1.0)
        return 7.0

    gauge = load.Gauge(lambda: depth(), 5, name="queue")  # a sync-looking read
    guard = Guard(load=[gauge], clock=Clock(0.0))
    was_async = gauge.is_async
    assert await handshake(guard) == {"type": "websocket.accept"}  # judged on no sample yet
    assert not was_async
    assert gauge.is_async
    assert reads == []  # closed, never run on the handshake path
    assert gauge.read_errors == 0
    assert await gauge.sample() is True  # the background sample awaits it
    assert reads == [1.0]
    reply = await handshake(guard)
    assert reply["code"] == 1013
    assert OVERLOADED.fullmatch(str(reply["reason"]))
    assert reads == [1.0]  # still never read at admission
    assert guard.metrics.snapshot().closes_by_code == {1000: 1, 1013: 1}


@asyncio_only  # an asyncio.Future is awaitable only on asyncio's loop
async def test_a_sync_read_returning_a_future_turns_the_gauge_async() -> None:
    loop = asyncio.get_running_loop()
    made: list[asyncio.Future[float]] = []

    def read() -> asyncio.Future[float]:
        future: asyncio.Future[float] = loop.create_future()
        future.set_result(0.5)
        made.append(future)
        return future

    gauge = load.Gauge(read, 1, name="health")
    guard = Guard(load=[gauge], clock=Clock(0.0))
    assert await handshake(guard) == {"type": "websocket.accept"}
    assert gauge.is_async
    assert len(made) == 1  # read once, at that handshake; a future needs no closing
    assert await gauge.sample() is False
    assert gauge.value() == 0.5
    assert await handshake(guard) == {"type": "websocket.accept"}
    assert len(made) == 2  # the sample only


async def test_sample_reads_a_sync_gauge_at_the_given_time() -> None:
    level = [3.0]
    gauge = load.Gauge(lambda: level[0], 2, name="rss", clear_below=1, hold=5.0)
    guard = Guard(load=[gauge], clock=Clock(0.0))
    assert await gauge.sample(now=10.0) is True
    level[0] = 0.0
    # The last reading at or above clear_below was at t=10: held until t=15.
    assert await gauge.sample(now=14.0) is True
    assert await gauge.sample(now=15.0) is True
    assert await gauge.sample(now=15.001) is False
    assert gauge.value() == 0.0
    assert not gauge.is_async
    assert await handshake(guard) == {"type": "websocket.accept"}


async def test_with_an_injected_clock_no_sampler_runs_and_shutdown_has_none_to_stop() -> None:
    gauge = load.Gauge(lambda: 0.0, 1, name="q")
    guard = Guard(load=[gauge], clock=Clock(0.0))
    await guard.startup()
    assert gauge._task is None  # tests call sample(); no background task on a manual clock
    await guard.shutdown()
    assert gauge._task is None
    assert not guard.started


def test_a_connection_count_outside_a_guard_reads_zero() -> None:
    gauge = load.ConnectionCount(limit=3)
    assert gauge.value() == 0


async def test_shutdown_ends_a_sampler_whose_read_swallows_the_cancel() -> None:
    # A user's async read that catches the cancel (a broad except in their
    # code) must not keep the sampler looping, nor make shutdown wait forever.
    reads: list[int] = []
    reading = anyio.Event()

    async def stubborn() -> float:
        reads.append(1)
        reading.set()
        try:
            await anyio.sleep(30)
        except anyio.get_cancelled_exc_class():
            pass  # swallowed: the bug this test is about
        return 0.0

    gauge = load.Gauge(stubborn, 1, name="q", interval=0.01)
    guard = Guard(load=[gauge])
    await guard.startup()
    with anyio.fail_after(5):
        await reading.wait()
    with anyio.fail_after(5):
        await guard.shutdown()
    assert gauge._task is None
    settled = len(reads)
    await anyio.sleep(0.05)  # five sampling intervals: a live loop would read again
    assert len(reads) == settled == 1
