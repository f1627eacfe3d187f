"""IdleTimeout and MaxLifetime on real uvicorn with the real ``websockets`` client.

Real time, kept short: deadlines of half a second to a few seconds, each
close timed by the client from its own open, within 100 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import re
import time
from collections.abc import Callable

import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect

from tests.support.apps import echo
from tests.support.helpers import FixedRandom
from tests.support.servers import UVICORN_WS, serve
from ws_guard import Guard, MetricsSnapshot, WSGuardMiddleware, rules
from ws_guard.client import (
    Decision,
    GaveUp,
    ReconnectPolicy,
    Retry,
    Stop,
    retry_after_hint,
)
from ws_guard.client import connect as reconnecting
from ws_guard.client._actions import IDLE_WHY

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.filterwarnings("ignore:The `websockets` implementation is deprecated"),
    pytest.mark.filterwarnings("ignore:websockets.legacy is deprecated"),
    pytest.mark.filterwarnings("ignore:remove second argument of ws_handler"),
]

#: How far a close observed by the client may be from its deadline, in seconds.
TOLERANCE = 0.1


async def until(guard: Guard, done: Callable[[MetricsSnapshot], bool]) -> MetricsSnapshot:
    deadline = time.monotonic() + 5
    while True:
        snap = guard.metrics.snapshot()
        if done(snap):
            return snap
        if time.monotonic() > deadline:
            raise AssertionError(f"server counters never matched: {snap}")
        await asyncio.sleep(0.01)


async def closed_after(ws: ClientConnection, opened: float) -> tuple[float, int, str]:
    """Wait for the server's close; seconds since *opened*, the code and the reason."""
    try:
        message = await asyncio.wait_for(ws.recv(), 5)
    except websockets.ConnectionClosed as exc:
        if exc.rcvd is None:
            raise AssertionError("the connection ended without a close frame") from exc
        return time.monotonic() - opened, exc.rcvd.code, exc.rcvd.reason
    raise AssertionError(f"a message before the close: {message!r}")


async def idle(url: str) -> tuple[float, int, str]:
    async with connect(url, ping_interval=None) as ws:
        return await closed_after(ws, time.monotonic())


async def pinging(url: str) -> tuple[float, int, str]:
    """Only pings (answered by the server, never seen by ASGI apps): still idle."""
    async with connect(url, ping_interval=None) as ws:
        opened = time.monotonic()

        async def ping_forever() -> None:
            while True:
                await asyncio.wait_for(await ws.ping(), 2)  # the server's pong came back
                await asyncio.sleep(0.1)

        pinger = asyncio.create_task(ping_forever())
        try:
            return await closed_after(ws, opened)
        finally:
            pinger.cancel()


async def active(url: str, seconds: float) -> list[str]:
    """Sends a message every 0.1 s for *seconds*; every one must be echoed."""
    echoed = []
    async with connect(url, ping_interval=None) as ws:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            await ws.send("tick")
            echoed.append(await asyncio.wait_for(ws.recv(), 2))
            await asyncio.sleep(0.1)
    return echoed


@pytest.mark.parametrize("kind", UVICORN_WS)
async def test_idle_and_ping_only_clients_close_at_the_deadline_an_active_one_stays(
    kind: str,
) -> None:
    guard = Guard(rules=[rules.IdleTimeout(0.5)])
    with serve(WSGuardMiddleware(echo, guard=guard), kind) as server:
        url = server.url + "/ws"
        idle_close, ping_close, echoed = await asyncio.gather(
            idle(url), pinging(url), active(url, 1.2)
        )
        snap = await until(guard, lambda s: s.active_connections == 0)
    for elapsed, code, reason in (idle_close, ping_close):
        assert (code, reason) == (1001, "idle_timeout")
        assert abs(elapsed - 0.5) <= TOLERANCE, elapsed
    assert len(echoed) >= 8
    assert set(echoed) == {"tick"}
    assert snap.closes_by_rule == {"idle_timeout": 2}
    assert snap.closes_by_code[1001] == 2
    assert sum(snap.closes_by_code.values()) == 3


async def test_lifetimes_spread_across_the_jitter_window_with_drawn_hints() -> None:
    seed, seconds, jitter, count = 48, 1.5, 1.5, 5
    draws = random.Random(seed)
    # The first draws are the ends, one per connection at its accept; the
    # hints are drawn at each close, in the order the connections close.
    expected_lifetimes = sorted(seconds + jitter * draws.random() for _ in range(count))
    assert min(b - a for a, b in itertools.pairwise(expected_lifetimes)) > 0.2
    # The same seed for the rule: it draws exactly the numbers above.
    rule = rules.MaxLifetime(
        seconds, jitter=jitter, retry_after=2, random_source=random.Random(seed)
    )
    guard = Guard(rules=[rule])
    with serve(WSGuardMiddleware(echo, guard=guard)) as server:
        url = server.url + "/ws"
        closes = await asyncio.gather(*(idle(url) for _ in range(count)))
        snap = await until(guard, lambda s: s.active_connections == 0)
    closes.sort()
    lifetimes = [elapsed for elapsed, _, _ in closes]
    for got, want in zip(lifetimes, expected_lifetimes, strict=True):
        assert abs(got - want) <= TOLERANCE, (lifetimes, expected_lifetimes)
    assert {code for _, code, _ in closes} == {1001}
    # Hints: 0.385, 1.524, 0.331, 1.932, 1.747 s drawn, sent rounded up to a tenth.
    assert [reason for _, _, reason in closes] == [
        "max_lifetime; retry-after=0.4",
        "max_lifetime; retry-after=1.6",
        "max_lifetime; retry-after=0.4",
        "max_lifetime; retry-after=2",
        "max_lifetime; retry-after=1.8",
    ]
    assert snap.closes_by_rule == {"max_lifetime": count}


# -- the client's side: ws_guard.client.connect against these closes ----------------------
async def test_client_rotates_after_max_lifetime_honouring_the_hint_without_counting() -> None:
    """max_attempts=1 would stop at the second counted close: rotations are not counted."""
    rule = rules.MaxLifetime(0.3, jitter=0, retry_after=0.5, random_source=random.Random(5))
    guard = Guard(rules=[rule])
    decisions: list[Decision] = []
    gaps: list[float] = []
    policy = ReconnectPolicy(max_attempts=1, random_source=FixedRandom(0.0))
    with serve(WSGuardMiddleware(echo, guard=guard)) as server:
        connections = reconnecting(server.url + "/ws", policy=policy, on_decision=decisions.append)
        async with contextlib.aclosing(connections):
            closed_at = None
            async for ws in connections:
                if closed_at is not None:
                    gaps.append(time.monotonic() - closed_at)
                if len(decisions) == 3:
                    break
                with contextlib.suppress(websockets.ConnectionClosed):
                    await ws.send("hi")
                    assert await asyncio.wait_for(ws.recv(), 2) == "hi"
                    await asyncio.wait_for(ws.recv(), 2)
                closed_at = time.monotonic()
        await until(guard, lambda s: s.active_connections == 0)
    assert [type(d) for d in decisions] == [Retry] * 3
    for decision, gap in zip(decisions, gaps, strict=True):
        assert isinstance(decision, Retry)
        assert (decision.code, decision.attempt) == (1001, 0)
        hint = retry_after_hint(decision.reason)
        assert re.fullmatch(r"max_lifetime; retry-after=\d(\.\d)?", decision.reason)
        assert hint is not None
        assert 0.0 <= hint <= 0.5
        assert decision.delay == hint  # the draw on top is 0 here
        assert gap >= hint - 0.01  # not before the hint (the client's own clock)
    assert guard.metrics.snapshot().closes_by_rule == {"max_lifetime": 3}


async def test_client_stops_after_idle_timeout() -> None:
    guard = Guard(rules=[rules.IdleTimeout(0.3)])
    decisions: list[Decision] = []
    with serve(WSGuardMiddleware(echo, guard=guard)) as server:
        connections = reconnecting(server.url + "/ws", on_decision=decisions.append)
        opened = 0

        async def wait_on_each() -> None:
            nonlocal opened
            async for ws in connections:
                opened += 1
                with contextlib.suppress(websockets.ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 2)

        with pytest.raises(GaveUp) as gave_up:
            await wait_on_each()
        await until(guard, lambda s: s.active_connections == 0)
    assert opened == 1
    assert (gave_up.value.code, gave_up.value.reason) == (1001, "idle_timeout")
    assert decisions == [Stop(1001, "idle_timeout", 1, IDLE_WHY)]
