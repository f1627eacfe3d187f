"""Drain edge cases, in process, on an injected clock.

A handshake that is past the drain check when the plan is made and admitted
afterwards; handlers that ignore the disconnect a drain gave them (the drain
gives up after its grace, ``app_exit_timeout`` ends them); and the task
running ``guard.drain()`` cancelled halfway. Each test asserts exact close
codes, counters and that nothing is left behind (connections, deadlines).
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Sequence
from typing import Any

import anyio
import pytest

from tests.support.apps import echo
from tests.support.backends import joined
from tests.support.helpers import sent_close as close_of
from tests.support.rate_helpers import Clock
from ws_guard import Guard, WSGuardMiddleware, rules
from ws_guard._core.connection import Connection
from ws_guard._core.tasks import spawn, wait_done
from ws_guard.testing import ScriptedWebSocket
from ws_guard.types import Receive, Scope, Send

RESTARTING = re.compile(r"restarting; retry-after=(?:1(?:\.[0-9])?|2)")


class Gate(rules.Rule):
    """Holds handshakes inside admission while ``hold`` is set, as a slow storage call does."""

    def __init__(self) -> None:
        super().__init__()
        self.hold = False
        self.waiting = anyio.Event()
        self.opened = anyio.Event()

    async def admit(self, conn: Connection) -> None:
        if self.hold:
            self.waiting.set()
            await self.opened.wait()
        return None


async def open_clients(app: Any, n: int) -> list[ScriptedWebSocket]:
    clients = []
    for _ in range(n):
        ws = ScriptedWebSocket(app)
        await ws.connect()
        await ws.expect("websocket.accept")
        clients.append(ws)
    return clients


async def waited(event: anyio.Event, timeout: float) -> None:
    with anyio.fail_after(timeout):
        await event.wait()


async def settle(clients: Sequence[ScriptedWebSocket]) -> None:
    """Let close tasks run; each closed client answers its close once, as real ones do."""
    for _ in range(5):
        await anyio.sleep(0)
    for ws in clients:
        close = close_of(ws)
        if close is not None and not ws._client_gone:
            await ws.disconnect(close["code"])
    for _ in range(5):
        await anyio.sleep(0)


def closed(clients: Sequence[ScriptedWebSocket]) -> int:
    return sum(close_of(ws) is not None for ws in clients)


async def test_a_handshake_admitted_after_the_plan_is_closed_with_the_last_wave() -> None:
    clock = Clock(0.0)
    gate = Gate()
    guard = Guard(rules=[gate], clock=clock, random_source=random.Random(1))
    app = WSGuardMiddleware(echo, guard=guard)
    await guard.startup()
    planned = await open_clients(app, 2)
    gate.hold = True
    late = ScriptedWebSocket(app)
    await late.connect()
    await waited(gate.waiting, 2)  # past the drain check, not yet admitted

    drain = spawn(guard.drain(window=8.0))
    await settle(planned)
    assert closed(planned) == 1  # wave 0 of 2, at t=0
    gate.opened.set()  # admitted now, after the plan was made: not in it
    await late.expect("websocket.accept")
    await settle([late])
    assert close_of(late) is None  # its close comes with the plan's end, not before

    clock.now = 4.0  # wave 1 of 2: the last planned one, then the late handshake
    guard.scheduler.run_due()
    await settle([*planned, late])
    assert closed(planned) == 2
    close = await late.expect("websocket.close", code=1012)
    assert RESTARTING.fullmatch(close["reason"])
    await joined(drain, timeout=2)
    assert not guard.live_connections  # drain() returns once every closed connection finished
    for ws in (*planned, late):
        await ws.finished()
    snap = guard.metrics.snapshot()
    assert snap.closes_by_code == {1012: 3}
    assert snap.closes_by_rule == {"restarting": 3}
    assert snap.active_connections == 0
    await guard.shutdown()
    assert len(guard.scheduler) == 0


# -- handlers that ignore their disconnect ----------------------------------------------------
class Stubborn:
    """Accepts, takes the disconnect, and carries on forever (sending into the void)."""

    def __init__(self) -> None:
        self.disconnects: list[dict[str, Any]] = []
        self.cancelled = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        self.disconnects.append(await receive())
        try:
            while True:
                await send({"type": "websocket.send", "text": "still here"})
                await anyio.sleep(0.01)
        except anyio.get_cancelled_exc_class():
            self.cancelled += 1
            raise


async def test_drain_gives_up_after_its_grace_and_app_exit_timeout_ends_the_handlers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock(0.0)
    stubborn = Stubborn()
    guard = Guard(clock=clock, app_exit_timeout=5.0)
    await guard.startup()
    clients = await open_clients(WSGuardMiddleware(stubborn, guard=guard), 2)
    started = anyio.current_time()

    drain = spawn(guard.drain(window=0.0, grace=0.3))
    await settle(clients)
    await joined(drain, timeout=3)
    took = anyio.current_time() - started
    assert 0.3 <= took < 1.5, took  # waited its grace in real time, then gave up
    # Each handler got the drain's close as its disconnect and ignored it.
    assert [(d["type"], d["code"]) for d in stubborn.disconnects] == [
        ("websocket.disconnect", 1012),
        ("websocket.disconnect", 1012),
    ]
    assert len(guard.live_connections) == 2  # the handlers run on; the guard does not hide them
    assert [close_of(ws)["code"] for ws in clients] == [1012, 1012]  # type: ignore[index]
    # Nothing the handlers sent after the close reached the clients.
    assert [[m["type"] for m in ws.sent] for ws in clients] == [
        ["websocket.accept", "websocket.close"],
        ["websocket.accept", "websocket.close"],
    ]

    clock.now = 4.999  # app_exit_timeout counts from the close, at t=0
    guard.scheduler.run_due()
    await settle(clients)
    assert stubborn.cancelled == 0
    clock.now = 5.0
    guard.scheduler.run_due()
    for ws in clients:
        await ws.finished()  # the cancel is absorbed: the server sees a plain return
    assert stubborn.cancelled == 2
    assert not guard.live_connections
    snap = guard.metrics.snapshot()
    assert snap.closes_by_code == {1012: 2}  # a cancelled handler is no crash: no 1011
    assert snap.active_connections == 0
    assert snap.dropped_sends > 0
    cancelled = [
        r.getMessage()
        for r in caplog.records
        if r.getMessage().startswith("ws_guard cancelled an app handler")
    ]
    assert len(cancelled) == 2
    assert all("still running 5.0 s" in m and "(code=1012)" in m for m in cancelled)
    assert all(r.levelno == logging.INFO for r in caplog.records if "cancelled an app" in r.msg)
    await guard.shutdown()
    assert len(guard.scheduler) == 0


# -- the task running drain() cancelled ------------------------------------------------------
async def test_a_cancelled_drain_call_leaves_the_drain_running_and_joinable() -> None:
    clock = Clock(10.0)
    guard = Guard(clock=clock, random_source=random.Random(2))
    app = WSGuardMiddleware(echo, guard=guard)
    await guard.startup()
    clients = await open_clients(app, 4)
    first = spawn(guard.drain(window=8.0))
    await settle(clients)
    assert closed(clients) == 1  # wave 0 at t=10
    first.cancel()
    await wait_done(first)
    assert first.cancelled()

    # The plan lives on the guard's scheduler, not in the cancelled task.
    assert guard.draining
    assert len(guard.scheduler) >= 1
    refused = ScriptedWebSocket(app)
    await refused.connect()
    await refused.expect("websocket.accept")
    close = await refused.expect("websocket.close", code=1012)
    assert RESTARTING.fullmatch(close["reason"])
    await refused.finished()

    clock.now = 12.0  # wave 1 of 4
    guard.scheduler.run_due()
    await settle(clients)
    assert closed(clients) == 2
    # A new call joins the drain in progress: it returns when the last wave ran.
    second = spawn(guard.drain(window=0.0))
    for now, expected in ((14.0, 3), (16.0, 4)):
        clock.now = now
        guard.scheduler.run_due()
        await settle(clients)
        assert closed(clients) == expected, now
    await joined(second, timeout=2)
    for ws in clients:
        await ws.finished()
        assert close_of(ws)["code"] == 1012  # type: ignore[index]
    snap = guard.metrics.snapshot()
    assert snap.closes_by_code == {1012: 5}  # four drained, one refused handshake
    assert snap.active_connections == 0
    assert not guard.live_connections
    await guard.shutdown()
    assert not guard.draining
    assert len(guard.scheduler) == 0


# -- a handshake admitted after the drain's plan ran out ---------------------------------------
@pytest.mark.parametrize("connections", [0, 1])
async def test_a_handshake_admitted_after_the_last_wave_is_closed_at_once(
    connections: int,
) -> None:
    clock = Clock(0.0)
    gate = Gate()
    guard = Guard(rules=[gate], clock=clock, random_source=random.Random(3))
    app = WSGuardMiddleware(echo, guard=guard)
    await guard.startup()
    planned = await open_clients(app, connections)
    gate.hold = True
    late = ScriptedWebSocket(app)  # in admission for as long as, say, a Redis timeout
    await late.connect()
    await waited(gate.waiting, 2)
    drain = spawn(guard.drain(window=8.0))
    await settle(planned)
    await joined(drain, timeout=2)  # one wave at most, at t=0: the plan is complete
    assert guard.draining

    gate.opened.set()
    await late.expect("websocket.accept")
    close = await late.expect("websocket.close", code=1012)
    assert RESTARTING.fullmatch(close["reason"])
    await late.disconnect(1012)
    await late.finished()
    assert [m["type"] for m in late.sent] == ["websocket.accept", "websocket.close"]
    assert not guard.live_connections
    assert guard.metrics.snapshot().closes_by_code == {1012: connections + 1}
    await guard.shutdown()
    assert len(guard.scheduler) == 0
