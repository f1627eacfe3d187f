"""Load gauges in process: hysteresis, lag sampling, user gauges, retry hints.

Time is an injected clock: trip, hold and clear are asserted at exact
instants without sleeping. A few tests use the real loop where the point is
the real sampler (its start, stop and overdue detection).
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import time
from typing import Any

import anyio
import pytest

from tests.support.apps import echo
from tests.support.backends import asyncio_only
from tests.support.helpers import eventually
from ws_guard import ConfigurationError, Guard, WSGuardMiddleware, load
from ws_guard.load.hysteresis import Hysteresis
from ws_guard.load.lag import LagWindow
from ws_guard.testing import ManualClock as Clock
from ws_guard.testing import ScriptedWebSocket

OVERLOADED = re.compile(r"overloaded; retry-after=(\d+(?:\.\d)?)")


async def admitted(guard: Guard) -> ScriptedWebSocket:
    ws = ScriptedWebSocket(WSGuardMiddleware(echo, guard=guard))
    await ws.connect()
    await ws.expect("websocket.accept")
    return ws


async def shed(guard: Guard) -> int:
    """Connect, expect accept-then-close 1013, return the retry-after hint."""
    ws = ScriptedWebSocket(WSGuardMiddleware(echo, guard=guard))
    await ws.connect()
    await ws.expect("websocket.accept")
    close = await ws.expect("websocket.close", code=1013)
    await ws.finished()
    match = OVERLOADED.fullmatch(close["reason"])
    assert match is not None, close
    return math.ceil(float(match.group(1)))


# -- hysteresis ---------------------------------------------------------------------
def test_hysteresis_trips_at_limit_and_clears_after_hold_below_lower_level() -> None:
    state = Hysteresis(limit=10, clear_below=5, hold=3)
    assert state.observe(0.0, 9.9) is False
    assert state.observe(1.0, 10.0) is True
    assert state.tripped_since == 1.0
    assert state.observe(2.0, 7.0) is True  # between the levels: the hold restarts
    assert state.observe(3.0, 4.0) is True
    assert state.poll(5.0) is True
    assert state.poll(5.0 + 1e-9) is False  # > 3 s since the last reading >= 5 (t=2)
    assert state.tripped_since is None


def test_hysteresis_without_band_follows_the_reading() -> None:
    state = Hysteresis(limit=3, clear_below=3, hold=0)
    assert state.observe(0.0, 3) is True
    assert state.observe(0.0, 3) is True
    assert state.observe(0.5, 2) is False
    assert state.observe(1.0, 4) is True


def test_lag_window_is_the_maximum_not_a_mean() -> None:
    window = LagWindow(1.0)
    for i in range(20):
        window.add(i * 0.05, 0.0)
    assert window.add(1.0, 0.15) == 0.15  # one stall among twenty idle samples
    for i in range(1, 20):
        assert window.add(1.0 + i * 0.05, 0.001) == 0.15
    assert window.add(2.0, 0.001) == 0.001  # the stall left the window


# -- event-loop lag with an injected clock -------------------------------------------
async def test_lag_trips_holds_and_clears_at_exact_instants() -> None:
    clock = Clock(100.0)
    lag = load.EventLoopLag(limit=0.25, hold=3.0, window=1.0)
    guard = Guard(load=[lag], clock=clock, random_source=random.Random(1))
    await guard.startup()
    assert not lag.running  # manual clock: the test feeds samples

    assert lag.record(100.0, 0.2) is False
    ws = await admitted(guard)
    assert lag.record(100.05, 0.3) is True
    assert lag.value() == 0.3
    clock.now = 100.1
    assert await shed(guard) in (1, 2)

    # Samples between clear_below (0.125) and the limit keep it tripped.
    assert lag.record(101.0, 0.2) is True
    for step in range(1, 80):  # quiet samples up to t=104.95
        t = 101.0 + step * 0.05
        lag.record(t, 0.01)
    # Last reading >= 0.125 at t=101.0; it leaves the window at 102.0 and
    # must stay out for 3 s: tripped through 105.0, clear just after.
    assert lag.observe(105.0) is True
    clock.now = 105.0
    await shed(guard)
    assert lag.observe(105.001) is False
    clock.now = 105.001
    late = await admitted(guard)

    snap = guard.metrics.snapshot()
    (reading,) = snap.gauges
    assert reading.name == "event_loop_lag"
    assert reading.sheds == 2
    assert reading.tripped is False
    assert snap.closes_by_code == {1013: 2}
    assert snap.closes_by_rule == {"overloaded": 2}
    for client in (ws, late):
        await client.disconnect()
        await client.finished()
    await guard.shutdown()


def test_lag_config_errors_name_the_value() -> None:
    with pytest.raises(ConfigurationError, match="-1"):
        load.EventLoopLag(limit=-1)
    with pytest.raises(ConfigurationError, match=r"0\.5"):
        load.EventLoopLag(limit=0.25, clear_below=0.5)
    with pytest.raises(ConfigurationError, match="interval"):
        load.EventLoopLag(interval=2.0, window=1.0)
    with pytest.raises(ConfigurationError, match="hold"):
        load.EventLoopLag(hold=-1)
    with pytest.raises(ConfigurationError, match="retry_max"):
        load.EventLoopLag(retry_min=10, retry_max=15)


MS = "looks like milliseconds"


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: load.EventLoopLag(limit=250),
            f"EventLoopLag limit is in seconds (at most 10); 250 {MS}",
        ),
        (
            lambda: load.EventLoopLag(limit=250.0),
            f"EventLoopLag limit is in seconds (at most 10); 250 {MS}",
        ),
        (
            lambda: load.EventLoopLag(hold=3000),
            f"EventLoopLag hold is in seconds (at most 600); 3000 {MS}",
        ),
        (
            lambda: load.EventLoopLag(window=1000),
            f"EventLoopLag window is in seconds (at most 60); 1000 {MS}",
        ),
        (
            lambda: load.EventLoopLag(interval=50),
            f"EventLoopLag interval is in seconds (at most 10); 50 {MS}",
        ),
        (
            lambda: load.Gauge(float, 1, name="q", interval=1000),
            f"Gauge interval is in seconds (at most 600); 1000 {MS}",
        ),
        (
            lambda: load.Gauge(float, 1, name="q", timeout=5000),
            f"Gauge timeout is in seconds (at most 600); 5000 {MS}",
        ),
        (
            lambda: load.Gauge(float, 1, name="q", hold=10**6),
            "Gauge hold is in seconds (at most 600); 1000000 is far too long",
        ),
        (
            lambda: load.ConnectionCount(5, retry_max=60_000),
            f"retry_max is in seconds (at most 3600); 60000 {MS}",
        ),
        (
            lambda: load.ConnectionCount(5, retry_min=5000, retry_max=3600),
            f"retry_min is in seconds (at most 1800); 5000 {MS}",
        ),
        (
            lambda: load.ShedOpen(after=10_000),
            f"ShedOpen after is in seconds (at most 3600); 10000 {MS}",
        ),
        (
            lambda: load.ShedOpen(interval=1000),
            f"ShedOpen interval is in seconds (at most 600); 1000 {MS}",
        ),
    ],
)
def test_gauge_seconds_that_look_like_milliseconds_are_refused(build: Any, message: str) -> None:
    # limit=250 meant as 250 ms would never trip: a 250 s stall is a dead server.
    with pytest.raises(ConfigurationError) as info:
        build()
    assert str(info.value) == message


@pytest.mark.parametrize(
    "build",
    [
        lambda: load.EventLoopLag(limit=10, hold=600, window=60, interval=10),
        lambda: load.Gauge(float, 1, name="q", interval=600, timeout=600, hold=600),
        lambda: load.ConnectionCount(5, retry_min=1800, retry_max=3600),
        lambda: load.ShedOpen(after=3600, interval=600),
    ],
)
def test_gauge_seconds_at_their_bounds_are_accepted(build: Any) -> None:
    build()


# -- the real sampler ---------------------------------------------------------------
# asyncio only: it checks the sampler's loop.call_at handle (on trio the
# sampler is a task: tests/unit/core/test_trio_core.py::test_background_gauges_sample_and_shed).
@asyncio_only
async def test_sampler_starts_in_startup_and_stops_in_shutdown() -> None:
    ticked = asyncio.Event()

    class Sampled(load.EventLoopLag):
        samples = 0

        def record(self, now: float, lag: float) -> bool:
            self.samples += 1
            if self.samples == 3:
                ticked.set()
            return super().record(now, lag)

    lag = Sampled(limit=0.25, interval=0.01, window=0.1)
    guard = Guard(load=[lag])
    assert not lag.running  # never in __init__
    await guard.startup()
    assert lag.running
    await asyncio.wait_for(ticked.wait(), 2)  # the sampler re-arms itself
    armed = lag._handle
    assert armed is not None
    await guard.shutdown()
    assert not lag.running
    assert armed.cancelled()  # nothing left armed that could fire
    # A timer due after the cancelled wake-up runs after it would have.
    loop = asyncio.get_running_loop()
    later = loop.create_future()
    loop.call_at(armed.when() + 0.001, later.set_result, None)
    stopped_at = lag.samples
    await asyncio.wait_for(later, 2)
    assert lag.samples == stopped_at


async def test_sampler_starts_lazily_on_the_first_connection() -> None:
    lag = load.EventLoopLag(limit=0.25, interval=0.01, window=0.1)
    guard = Guard(load=[lag])
    ws = await admitted(guard)  # no lifespan ran
    assert lag.running
    await ws.disconnect()
    await ws.finished()
    await guard.shutdown()
    assert not lag.running


async def test_a_stall_is_seen_by_the_first_check_after_it() -> None:
    lag = load.EventLoopLag(limit=0.1, hold=0.0, interval=0.01, window=0.05)
    guard = Guard(load=[lag])
    await guard.startup()
    time.sleep(0.2)  # block the loop: the sampler cannot run
    # The pending wake-up is overdue (scheduler.now(): asyncio's loop time, monotonic on trio).
    assert lag.observe(guard.scheduler.now()) is True
    await guard.shutdown()


# -- retry hints ---------------------------------------------------------------------
async def test_retry_hint_is_jittered_and_grows_with_the_overload() -> None:
    clock = Clock(0.0)
    count = load.ConnectionCount(limit=1, retry_min=1.0, retry_max=20.0)
    guard = Guard(load=[count], clock=clock, random_source=random.Random(7))
    keep = await admitted(guard)

    def hints(n: int) -> list[float]:
        assert count.observe(clock.now)
        closes = [count.overload_close(clock.now) for _ in range(n)]
        return [c.retry_after for c in closes if c.retry_after is not None]

    early = hints(200)
    assert len(early) == 200
    assert all(1.0 <= h < 2.0 for h in early)
    assert re.fullmatch(
        r"overloaded; retry-after=(1(\.[0-9])?|2)", count.overload_close(0.0).wire_reason
    )
    assert count.tripped_since == 0.0
    clock.now = 10.0  # ten seconds of overload: base 1 + 10/2 = 6
    later = hints(200)
    assert min(later) >= 6.0
    assert max(later) < 12.0
    assert max(later) - min(later) > 4.0  # spread, not one instant
    clock.now = 1000.0
    capped = hints(50)
    assert max(capped) <= 20.0
    assert min(capped) >= 10.0
    await keep.disconnect()
    await keep.finished()
    assert count.observe(clock.now) is False
    assert count.tripped_since is None


# -- connection count and shadow mode --------------------------------------------------
async def test_connection_count_sheds_the_next_connection() -> None:
    guard = Guard(load=[load.ConnectionCount(limit=2)])
    first, second = await admitted(guard), await admitted(guard)
    await shed(guard)
    await first.disconnect()
    await first.finished()
    third = await admitted(guard)
    snap = guard.metrics.snapshot()
    assert snap.gauges[0].value == 2
    assert snap.gauges[0].sheds == 1
    assert snap.handshakes_rejected == 1
    for ws in (second, third):
        await ws.disconnect()
        await ws.finished()


async def test_shadow_gauge_counts_and_logs_but_admits(caplog: pytest.LogCaptureFixture) -> None:
    guard = Guard(load=[load.ConnectionCount(limit=1, enforce=False)])
    first, second = await admitted(guard), await admitted(guard)
    await second.send_text("still here")
    await second.expect("websocket.send", text="still here")
    snap = guard.metrics.snapshot()
    assert snap.gauges[0].shadow_sheds == 1
    assert snap.gauges[0].sheds == 0
    assert snap.shadow_breaches_by_rule == {"overloaded": 1}
    assert snap.closes_by_code == {}
    assert "shadow breach code=1013 rule=overloaded" in caplog.text
    for ws in (first, second):
        await ws.disconnect()
        await ws.finished()


# -- user gauges ---------------------------------------------------------------------
async def test_sync_user_gauge_is_read_at_admission_with_hysteresis() -> None:
    clock = Clock(0.0)
    depth = [0.0]
    gauge = load.Gauge(lambda: depth[0], 100, name="queue", clear_below=50, hold=2.0)
    guard = Guard(load=[gauge], clock=clock)
    await admitted(guard)
    depth[0] = 100
    await shed(guard)
    clock.now, depth[0] = 1.0, 60  # below the limit, above clear_below
    await shed(guard)
    clock.now, depth[0] = 2.0, 10
    await shed(guard)  # the last reading >= clear_below was at t=1: hold until t=3
    clock.now = 3.0
    await shed(guard)
    clock.now = 3.001
    await admitted(guard)
    reading = guard.metrics.snapshot().gauges[0]
    assert (reading.name, reading.value, reading.limit, reading.sheds) == ("queue", 10, 100, 4)


async def test_user_gauge_read_errors_keep_the_last_value(
    caplog: pytest.LogCaptureFixture,
) -> None:
    values: list[object] = [5.0, RuntimeError("down"), "nan?", float("nan")]

    def read() -> float:
        value = values.pop(0)
        if isinstance(value, Exception):
            raise value
        return value  # type: ignore[return-value]

    gauge = load.Gauge(read, 3, name="rss")
    guard = Guard(load=[gauge], clock=Clock(1000.0))
    await shed(guard)
    for _ in range(3):
        await shed(guard)  # errors: still the last value, 5 >= 3
    assert gauge.read_errors == 3
    assert gauge.value() == 5.0
    assert "gauge rss could not read (RuntimeError: down)" in caplog.text


async def test_async_user_gauge_is_never_read_on_the_handshake_path() -> None:
    clock = Clock(0.0)
    calls: list[float] = []
    level = [0.0]

    async def health() -> float:
        calls.append(clock.now)
        return level[0]

    gauge = load.Gauge(health, 1, name="downstream")
    guard = Guard(load=[gauge], clock=clock)
    assert gauge.is_async
    await admitted(guard)
    assert calls == []
    level[0] = 1
    assert await gauge.sample() is True
    await shed(guard)
    await shed(guard)
    assert calls == [0.0]
    level[0] = 0
    clock.now = 1.0
    assert await gauge.sample() is False
    await admitted(guard)


async def test_async_user_gauge_times_out_and_samples_in_the_background() -> None:
    slow = anyio.Event()
    reads = [0]

    async def read() -> float:
        reads[0] += 1
        if reads[0] == 2:
            await slow.wait()  # hangs: the timeout keeps sampling going
        return 2.0

    gauge = load.Gauge(read, 1, name="slow", interval=0.02, timeout=0.05)
    guard = Guard(load=[gauge])
    await guard.startup()
    await eventually(lambda: reads[0] >= 4, 2.0, what="four reads past the hung one")
    assert gauge.read_errors >= 1
    assert gauge.tripped()
    sampler = gauge._task
    assert sampler is not None
    await guard.shutdown()
    assert sampler.done()  # the task stopped with the guard: no read can follow
    assert gauge._task is None


def test_user_gauge_config_errors() -> None:
    with pytest.raises(ConfigurationError, match="'nope'"):
        load.Gauge("nope", 1, name="x")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="clear_below"):
        load.Gauge(lambda: 0.0, 1, name="x", clear_below=2)
    with pytest.raises(ConfigurationError, match="name"):
        load.Gauge(lambda: 0.0, 1, name="")
    with pytest.raises(ConfigurationError, match="shed_open"):
        load.Gauge(lambda: 0.0, 1, name="x", shed_open=3)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="fraction"):
        load.ShedOpen(fraction=1.5)


async def test_async_user_gauge_state_stands_between_samples() -> None:
    """With hold=0 the last sample decides until the next one, not the clock."""
    clock = Clock(0.0)
    level = [5.0]

    async def read() -> float:
        return level[0]

    gauge = load.Gauge(read, 1, name="between", interval=1.0)
    guard = Guard(load=[gauge], clock=clock)
    assert await gauge.sample() is True
    clock.now = 0.5  # half an interval later, no new sample: still tripped
    await shed(guard)
    assert gauge.tripped()
    level[0] = 0.0
    clock.now = 1.0
    assert await gauge.sample() is False  # a low reading clears it
    ws = await admitted(guard)
    await ws.disconnect()
    await ws.finished()


@asyncio_only  # the lost cancel is asyncio.wait_for's, before Python 3.12
async def test_shutdown_ends_the_sampler_even_when_a_cancel_is_lost() -> None:
    """Before Python 3.12, ``asyncio.wait_for`` returns the read's result and
    drops a cancel that lands as the read finishes; shutdown must still end."""
    stopping: list[asyncio.Task[None]] = []

    async def read() -> float:
        if not stopping:  # shut down just as this read returns
            stopping.append(asyncio.get_running_loop().create_task(guard.shutdown()))
        return 0.0

    gauge = load.Gauge(read, 1, name="racy", interval=0.05)
    guard = Guard(load=[gauge])
    await guard.startup()
    while not stopping:
        await asyncio.sleep(0)
    done, _ = await asyncio.wait(stopping, timeout=2)  # no cancel on timeout, unlike wait_for
    assert done, "Guard.shutdown() never returned: the sampler outlived its cancel"
    assert gauge._task is None
