"""Shedding of open connections and graceful drain, in process, on an injected clock."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import re
import signal
import threading
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
import pytest

from tests.support.apps import echo
from tests.support.backends import joined
from tests.support.helpers import eventually
from tests.support.helpers import sent_close as closed_with
from ws_guard import ConfigurationError, Guard, WSGuardMiddleware, load, rules
from ws_guard._core import runtime
from ws_guard._core.signals import SignalDrain, parse_signals
from ws_guard._core.tasks import spawn
from ws_guard.testing import ManualClock as Clock
from ws_guard.testing import ScriptedWebSocket, _Queue

RESTARTING = re.compile(r"restarting; retry-after=(\d+(?:\.\d)?)")


async def open_clients(guard: Guard, n: int) -> list[ScriptedWebSocket]:
    clients = []
    for _ in range(n):
        ws = ScriptedWebSocket(WSGuardMiddleware(echo, guard=guard))
        await ws.connect()
        await ws.expect("websocket.accept")
        clients.append(ws)
        await anyio.sleep(0.001)  # distinct opened_at (monotonic) for newest-first order
    return clients


async def settle(clients: Sequence[ScriptedWebSocket] = ()) -> None:
    """Let close tasks run; closed clients answer with their close, as real ones do.

    (Answering twice is harmless: nothing reads a finished connection's queue.)
    """
    for _ in range(5):
        await anyio.sleep(0)
    for ws in clients:
        close = closed_with(ws)
        if close is not None:
            await ws.disconnect(close["code"])
    for _ in range(5):
        await anyio.sleep(0)


@contextlib.asynccontextmanager
async def answering(clients: Sequence[ScriptedWebSocket]) -> AsyncIterator[None]:
    """Closed clients answer their close in the background, as real ones do."""

    async def loop() -> None:
        while True:
            await settle(clients)
            await anyio.sleep(0.005)

    async with anyio.create_task_group() as group:
        group.start_soon(loop)
        try:
            yield
        finally:
            group.cancel_scope.cancel()


# -- shedding of open connections ------------------------------------------------------
async def test_sustained_overload_sheds_newest_first_a_bounded_fraction() -> None:
    clock = Clock(10.0)
    lag = load.EventLoopLag(
        limit=0.25, hold=1.0, window=1.0, shed_open=load.ShedOpen(after=5.0, fraction=0.2)
    )
    guard = Guard(load=[lag], clock=clock, random_source=random.Random(3))
    await guard.startup()
    clients = await open_clients(guard, 10)
    newest_first = list(reversed(clients))

    lag.record(10.0, 0.5)  # tripped since t=10
    for t in (11.0, 12.0, 13.0, 14.0):
        clock.now = t
        lag.record(t, 0.5)
        guard.scheduler.run_due()
    await settle(clients)
    assert [closed_with(ws) for ws in clients] == [None] * 10  # not sustained yet

    clock.now = 15.0  # tripped for 5 s: 20 % of 10 open connections go
    lag.record(15.0, 0.5)
    guard.scheduler.run_due()
    await settle(clients)
    shed = [ws for ws in clients if closed_with(ws) is not None]
    assert shed == newest_first[:2][::-1]
    for ws in shed:
        reason = closed_with(ws)
        assert reason is not None
        assert reason["code"] == 1013
        assert re.fullmatch(r"overloaded; retry-after=\d+(?:\.\d)?", reason["reason"])
        await ws.finished()

    # Still tripped: 20 % of those left, at least one, every interval. The
    # lag is gone from t=17; it clears at t > 16 + window + hold = 18.
    for t, lag_now, total in ((16.0, 0.5, 3), (17.0, 0.0, 4), (18.0, 0.0, 5), (19.0, 0.0, 5)):
        clock.now = t
        lag.record(t, lag_now)
        guard.scheduler.run_due()
        await settle(clients)
        assert [ws for ws in clients if closed_with(ws)] == newest_first[:total][::-1], t
    assert not lag.tripped()
    reading = guard.metrics.snapshot().gauges[0]
    assert (reading.open_sheds, reading.sheds) == (5, 0)
    for ws in clients:
        if closed_with(ws) is None:
            await ws.disconnect()
        await ws.finished()
    await guard.shutdown()


async def _shed_once(priority: Any, caplog: pytest.LogCaptureFixture) -> list[bool]:
    """Four clients, half shed in one tick under *priority*; which of them were closed."""
    clock = Clock(0.0)
    depth = [0.0]
    gauge = load.Gauge(
        lambda: depth[0],
        10,
        name="queue",
        shed_open=load.ShedOpen(after=0.0, fraction=0.5, interval=1.0, priority=priority),
    )
    guard = Guard(load=[gauge], clock=clock)
    await guard.startup()
    clients = await open_clients(guard, 4)
    conns = sorted(guard.live_connections, key=lambda conn: conn.opened_at)
    for rank, conn in enumerate(conns):
        conn.scope["rank"] = rank  # the priority's input: 0 the oldest, 3 the newest
    depth[0] = 100.0
    clock.now = 1.0
    with caplog.at_level(logging.ERROR, logger="ws_guard"):
        guard.scheduler.run_due()
        clock.now = 2.0
        depth[0] = 0.0  # clears on the next reading: one tick of shedding only
        await settle(clients)
    shed = [conn.guard_close is not None for conn in conns]
    for ws in clients:
        if closed_with(ws) is None:
            await ws.disconnect()
        await ws.finished()
    await guard.shutdown()
    return shed


async def test_a_priority_that_raises_for_some_connections_sheds_them_first(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def priority(conn: Any) -> float:
        rank = conn.scope["rank"]
        if rank == 3:
            raise KeyError("plan")  # a claim this connection lacks
        return float(rank)

    assert await _shed_once(priority, caplog) == [True, False, False, True]
    errors = [r.getMessage() for r in caplog.records if "ShedOpen priority" in r.getMessage()]
    assert len(errors) == 1
    assert "raised KeyError('plan')" in errors[0]


async def test_a_priority_whose_values_do_not_compare_sheds_newest_first(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def priority(conn: Any) -> float | None:
        return None if conn.scope["rank"] % 2 else float(conn.scope["rank"])

    assert await _shed_once(priority, caplog) == [False, False, True, True]
    errors = [r.getMessage() for r in caplog.records if "ShedOpen priority" in r.getMessage()]
    assert len(errors) == 1
    assert "do not compare" in errors[0]


async def test_shedding_by_user_priority_and_in_shadow_mode() -> None:
    clock = Clock(0.0)
    depth = [100.0]
    order: dict[str, float] = {}

    def priority(conn: Any) -> float:
        return order[conn.id]

    gauge = load.Gauge(
        lambda: depth[0],
        10,
        name="queue",
        shed_open=load.ShedOpen(after=0.0, fraction=0.5, interval=1.0, priority=priority),
    )
    guard = Guard(load=[gauge], clock=clock)
    await guard.startup()
    depth[0] = 0.0
    clients = await open_clients(guard, 4)
    for rank, conn in zip((3, 0, 2, 1), guard.live_connections, strict=False):
        order[conn.id] = rank
    lowest = sorted(guard.live_connections, key=lambda c: order[c.id])[:2]
    depth[0] = 100.0
    clock.now = 1.0
    guard.scheduler.run_due()
    await settle(clients)
    assert all(c.guard_close is not None and c.guard_close.code == 1013 for c in lowest)
    assert sum(closed_with(ws) is not None for ws in clients) == 2
    for ws in clients:
        if closed_with(ws) is None:
            await ws.disconnect()
        await ws.finished()
    await guard.shutdown()

    shadow = load.ConnectionCount(limit=1, enforce=False, shed_open=load.ShedOpen(after=0.0))
    guard = Guard(load=[shadow], clock=clock)
    await guard.startup()
    clients = await open_clients(guard, 2)
    clock.now = 3.0
    guard.scheduler.run_due()
    await settle(clients)
    assert [closed_with(ws) for ws in clients] == [None, None]
    snap = guard.metrics.snapshot()
    assert snap.gauges[0].shadow_sheds == 2  # one handshake, one open connection
    assert snap.gauges[0].open_sheds == 0
    for ws in clients:
        await ws.disconnect()
        await ws.finished()
    await guard.shutdown()


# -- drain -------------------------------------------------------------------------------
async def test_drain_spreads_1012_over_the_window_and_refuses_new_handshakes() -> None:
    clock = Clock(50.0)
    guard = Guard(clock=clock, random_source=random.Random(5))
    await guard.startup()
    clients = await open_clients(guard, 4)
    drain = spawn(guard.drain(window=8.0))
    await settle(clients)
    assert guard.draining
    assert sum(closed_with(ws) is not None for ws in clients) == 1  # wave 0 at t=50

    late = ScriptedWebSocket(WSGuardMiddleware(echo, guard=guard))
    await late.connect()
    await late.expect("websocket.accept")
    refused = await late.expect("websocket.close", code=1012)
    assert RESTARTING.fullmatch(refused["reason"])

    for t, closed in ((51.9, 1), (52.0, 2), (54.0, 3), (55.9, 3), (56.0, 4)):
        clock.now = t
        guard.scheduler.run_due()
        await settle(clients)
        assert sum(closed_with(ws) is not None for ws in clients) == closed, t
    await joined(drain, timeout=2.0)
    hints = set()
    for ws in clients:
        close = closed_with(ws)
        assert close is not None
        assert close["code"] == 1012
        match = RESTARTING.fullmatch(close["reason"])
        assert match is not None
        hints.add(math.ceil(float(match.group(1))))
        await ws.finished()
    assert hints <= {1, 2}
    snap = guard.metrics.snapshot()
    assert snap.closes_by_code == {1012: 5}
    assert snap.closes_by_rule == {"restarting": 5}
    assert snap.active_connections == 0
    await guard.shutdown()


async def test_drain_refuses_with_503_in_http_mode() -> None:
    guard = Guard(reject="http", random_source=random.Random(0))
    await guard.drain(window=0)
    ws = ScriptedWebSocket(WSGuardMiddleware(echo, guard=guard))
    await ws.connect()
    start = await ws.expect("websocket.http.response.start", status=503)
    assert (b"retry-after", b"2") in start["headers"] or (b"retry-after", b"1") in start["headers"]
    await ws.expect("websocket.http.response.body")


async def test_drain_with_1001_and_bad_arguments() -> None:
    guard = Guard()
    with pytest.raises(ConfigurationError, match="1013"):
        await guard.drain(code=1013)
    with pytest.raises(ConfigurationError, match="-1"):
        await guard.drain(window=-1)
    clients = await open_clients(guard, 1)
    async with answering(clients):
        with anyio.fail_after(1.0):
            await guard.drain(window=0, code=1001)
    close = closed_with(clients[0])
    assert close is not None
    assert (close["code"], close["reason"].split(";")[0]) == (1001, "going_away")


async def test_a_drain_that_falls_behind_closes_the_rest_when_its_window_ends() -> None:
    clock = Clock(0.0)  # never advanced: the waves after the first never come due
    guard = Guard(clock=clock)
    clients = await open_clients(guard, 3)
    async with answering(clients):
        with anyio.fail_after(1.0):
            await guard.drain(window=0.1, grace=0.2)
    assert [c is not None and c["code"] == 1012 for c in map(closed_with, clients)] == [True] * 3


async def test_lifespan_shutdown_drains_before_stopping() -> None:
    guard = Guard(drain_window=0.2)
    app = WSGuardMiddleware(echo, guard=guard)
    lifespan_in = _Queue()
    lifespan_out = _Queue()
    task = spawn(
        app({"type": "lifespan", "asgi": {"version": "3.0"}}, lifespan_in.get, lifespan_out.put)
    )
    await lifespan_in.put({"type": "lifespan.startup"})
    with anyio.fail_after(2):
        assert (await lifespan_out.get())["type"] == "lifespan.startup.complete"
    clients = await open_clients(guard, 3)
    started = anyio.current_time()
    await lifespan_in.put({"type": "lifespan.shutdown"})
    async with answering(clients):
        with anyio.fail_after(3):
            done = await lifespan_out.get()
    assert done["type"] == "lifespan.shutdown.complete"
    assert 0.1 <= anyio.current_time() - started < 1.5
    for ws in clients:
        close = closed_with(ws)
        assert close is not None
        assert close["code"] == 1012
    assert not guard.started
    await joined(task)


# -- signal hook ---------------------------------------------------------------------------
def test_drain_signals_are_parsed_and_checked() -> None:
    assert parse_signals(["SIGTERM", signal.SIGINT, int(signal.SIGTERM)]) == (
        signal.SIGTERM,
        signal.SIGINT,
    )
    with pytest.raises(ConfigurationError, match="'SIGNOPE'"):
        Guard(drain_signals=["SIGNOPE"])
    with pytest.raises(ConfigurationError, match="'SIGTERM'"):
        Guard(drain_signals="SIGTERM")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="drain_window"):
        Guard(drain_window=-2)


async def test_signal_hook_is_skipped_outside_the_main_thread(
    caplog: pytest.LogCaptureFixture,
) -> None:
    result: list[bool] = []

    def run() -> None:
        async def main() -> None:
            hook = SignalDrain(Guard(), (signal.SIGTERM,))
            result.append(hook.install())

        asyncio.run(main())

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(5)
    assert result == [False]
    assert "not in the main thread" in caplog.text


async def test_signal_hook_drains_then_calls_the_replaced_handler() -> None:
    forwarded: list[int] = []

    def server_handler(sig: int, frame: object) -> None:
        forwarded.append(sig)

    previous = signal.signal(signal.SIGUSR1, server_handler)
    try:
        guard = Guard(drain_signals=["SIGUSR1"], drain_window=0.1)
        await guard.startup()
        clients = await open_clients(guard, 2)
        signal.raise_signal(signal.SIGUSR1)
        async with answering(clients):
            await eventually(lambda: bool(forwarded), what="the drain forwarding the signal")
        assert forwarded == [signal.SIGUSR1]
        assert guard.draining
        assert all(closed_with(ws) is not None for ws in clients)
        signal.raise_signal(signal.SIGUSR1)  # after the drain: passed straight on
        assert forwarded == [signal.SIGUSR1, signal.SIGUSR1]
        assert signal.getsignal(signal.SIGUSR1) is not server_handler  # ours, in front
        await guard.shutdown()
        # Ours is gone: the very handler it replaced is back, and runs alone.
        assert signal.getsignal(signal.SIGUSR1) is server_handler
        signal.raise_signal(signal.SIGUSR1)
        assert forwarded == [signal.SIGUSR1] * 3
    finally:
        signal.signal(signal.SIGUSR1, previous)


async def test_a_shutdown_cancelled_during_its_drain_still_stops_the_guard() -> None:
    lag = load.EventLoopLag(limit=0.25, interval=0.01, window=0.1)
    guard = Guard(load=[lag], drain_window=30.0)  # a drain far longer than the test
    await guard.startup()
    clients = await open_clients(guard, 2)
    assert lag.running
    async with answering(clients):
        with anyio.move_on_after(0.2) as scope:  # the server's own deadline on shutdown
            await guard.shutdown()
    assert scope.cancelled_caught
    assert not guard.started
    assert not guard.draining
    assert not lag.running
    assert not guard.scheduler.timer_armed
    await guard.startup()  # and it may start again
    assert lag.running
    assert not guard.draining
    await guard.shutdown()


async def test_a_rule_whose_shutdown_hangs_cannot_hold_a_cancelled_shutdown_for_ever(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Stuck(rules.Rule):
        async def shutdown(self, guard: Any) -> None:
            await anyio.sleep_forever()  # say, a release waiting on a dead Redis

    monkeypatch.setattr(runtime, "STOP_GRACE", 0.2)
    guard = Guard(rules=[Stuck()])
    await guard.startup()
    with caplog.at_level(logging.WARNING, logger="ws_guard"), anyio.fail_after(3):
        with anyio.move_on_after(0.05):  # the server's deadline, long before the stop ends
            await guard.shutdown()
    assert not guard.started
    assert "stopped waiting for its rules and storage after 0.2 s" in caplog.text
