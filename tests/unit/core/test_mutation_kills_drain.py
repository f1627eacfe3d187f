"""Drain (``_core/drain.py``): the exact values mutation testing found unchecked.

Each test pins one behaviour that a mutant of ``Drain`` changed while the
rest of the suite still passed: the hint's arithmetic, the count of closes,
handshakes admitted during a drain, the wave timer after a flush, a second
cancel, the configuration messages, and that a drain waits for the closed
connections to finish. In process, on an injected clock; the one real wait
is the drain's own window (0.1 s), bounded by ``wait_for``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import anyio
import pytest

from tests.support import helpers
from tests.support.apps import echo
from tests.support.backends import joined
from tests.support.helpers import sent_close as closed_with
from ws_guard import ConfigurationError, Guard, WSGuardMiddleware
from ws_guard._core.connection import Connection
from ws_guard._core.decisions import Close
from ws_guard._core.drain import Drain
from ws_guard._core.tasks import spawn, wait_done
from ws_guard.rules.base import Rule
from ws_guard.testing import ManualClock as Clock
from ws_guard.testing import ScriptedWebSocket


class FixedRandom(helpers.FixedRandom):
    """``random()`` always returns *value*; ``shuffle`` keeps the order."""

    def shuffle(self, x: Any) -> None:
        return None


class Latch:
    """``asyncio.Event`` with ``clear()``, on any backend (anyio events cannot be cleared)."""

    def __init__(self) -> None:
        self._open = False
        self._event = anyio.Event()

    def set(self) -> None:
        self._open = True
        self._event.set()

    def clear(self) -> None:
        self._open = False
        if self._event.is_set():
            self._event = anyio.Event()

    async def wait(self) -> None:
        while not self._open:
            await self._event.wait()


class Gate(Rule):
    """Admits a handshake only once ``gate`` is set: an admission that awaits."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = Latch()
        self.waiting = 0

    async def admit(self, conn: Connection) -> Close | None:
        self.waiting += 1
        await self.gate.wait()
        return None


async def open_client(guard: Guard) -> ScriptedWebSocket:
    ws = ScriptedWebSocket(WSGuardMiddleware(echo, guard=guard))
    await ws.connect()
    await ws.expect("websocket.accept")
    return ws


async def spin(turns: int = 10) -> None:
    for _ in range(turns):
        await anyio.sleep(0)


@contextlib.asynccontextmanager
async def answering(clients: Sequence[ScriptedWebSocket]) -> AsyncIterator[None]:
    """Closed clients answer their close in the background, as real ones do."""
    answered: set[int] = set()

    async def loop() -> None:
        while True:
            for ws in clients:
                close = closed_with(ws)
                if close is not None and id(ws) not in answered:
                    answered.add(id(ws))
                    await ws.disconnect(close["code"])
            await anyio.sleep(0.005)

    async with anyio.create_task_group() as group:
        group.start_soon(loop)
        try:
            yield
        finally:
            group.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("code", "slug", "draw", "retry_after", "hint"),
    [
        (1012, "restarting", 0.5, 2.0, 3.0),
        (1001, "going_away", 0.25, 4.0, 5.0),
        (1012, "restarting", 0.0, 1.5, 1.5),
    ],
)
def test_each_client_gets_retry_after_times_one_plus_its_draw(
    code: int, slug: str, draw: float, retry_after: float, hint: float
) -> None:
    guard = Guard(random_source=FixedRandom(draw))
    drain = Drain(guard, window=0.0, code=code, retry_after=retry_after, grace=0.0)
    assert drain.close_for_one() == Close(code, slug, slug, hint, jittered=True)


@pytest.mark.parametrize(
    ("window", "retry_after", "grace", "message"),
    [
        (-1, 1.0, 0.0, "drain window must be a number >= 0, not -1"),
        (0.0, 0, 0.0, "drain retry_after must be a positive number, not 0"),
        (0.0, 1.0, -0.5, "drain grace must be a number >= 0, not -0.5"),
    ],
)
def test_bad_drain_arguments_name_the_argument_and_value(
    window: float, retry_after: float, grace: float, message: str
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        Drain(Guard(), window=window, code=1012, retry_after=retry_after, grace=grace)
    assert str(raised.value) == message


def test_a_bad_drain_code_names_the_codes_it_takes() -> None:
    with pytest.raises(ConfigurationError) as raised:
        Drain(Guard(), window=0.0, code=1013, retry_after=1.0, grace=0.0)
    assert str(raised.value) == "drain code must be one of [1001, 1012], not 1013"


async def test_closed_counts_each_connection_the_waves_close_once() -> None:
    clock = Clock(10.0)
    guard = Guard(clock=clock, random_source=FixedRandom(0.0))
    clients = [await open_client(guard) for _ in range(3)]
    drain = Drain(guard, window=3.0, code=1012, retry_after=1.0, grace=0.0)
    drain.start()
    await spin()
    assert drain.closed == 1  # wave 0 at t=10
    for t, closed in ((11.0, 2), (12.0, 3), (13.0, 3)):
        clock.now = t
        guard.scheduler.run_due()
        await spin()
        assert drain.closed == closed, t
    assert [closed_with(ws) for ws in clients] == [
        {"type": "websocket.close", "code": 1012, "reason": "restarting; retry-after=1"}
    ] * 3


async def test_a_handshake_admitted_during_the_drain_is_closed_by_the_last_wave() -> None:
    clock = Clock(0.0)
    gate = Gate()
    guard = Guard(rules=[gate], clock=clock, random_source=FixedRandom(0.0))
    gate.gate.set()
    early = [await open_client(guard) for _ in range(2)]
    gate.gate.clear()
    late = ScriptedWebSocket(WSGuardMiddleware(echo, guard=guard))
    await late.connect()
    await spin()
    assert gate.waiting == 3  # past the drain check, waiting in admission

    drain = spawn(guard.drain(window=4.0, grace=1.0))
    await spin()
    assert sum(closed_with(ws) is not None for ws in early) == 1  # wave 0 at t=0
    gate.gate.set()  # admitted now, after the plan was made
    await late.expect("websocket.accept")
    assert closed_with(late) is None

    async with answering(early):
        clock.now = 2.0  # the last planned wave: the late handshake goes with it
        guard.scheduler.run_due()
        await spin()
        assert closed_with(late) == {
            "type": "websocket.close",
            "code": 1012,
            "reason": "restarting; retry-after=1",
        }
        for _ in range(200):  # the early clients answer within a few ms
            if len(guard.live_connections) == 1:
                break
            await anyio.sleep(0.005)
        assert len(guard.live_connections) == 1
    # The late client has not answered yet: the drain waits for it too (up
    # to its 1 s grace), well past one 20 ms turn of its polling.
    with anyio.move_on_after(0.2):
        await wait_done(drain)  # never cancels the drain
    assert not drain.done()
    await late.disconnect(1012)
    await joined(drain, timeout=2.0)
    assert guard.metrics.snapshot().active_connections == 0
    assert guard.metrics.snapshot().closes_by_code == {1012: 3}


async def test_a_drain_returns_once_the_closed_connections_have_finished() -> None:
    guard = Guard(random_source=FixedRandom(0.0))
    clients = [await open_client(guard) for _ in range(2)]
    async with answering(clients):
        with anyio.fail_after(3.0):
            await guard.drain(window=0.0, grace=2.0)
        # No await between the drain's return and this read.
        assert guard.metrics.snapshot().active_connections == 0
    assert guard.live_connections == set()


async def test_a_flush_cancels_the_next_wave() -> None:
    clock = Clock(0.0)  # never advanced: the second wave never comes due
    guard = Guard(clock=clock, random_source=FixedRandom(0.0))
    clients = [await open_client(guard) for _ in range(2)]
    async with answering(clients):
        with anyio.fail_after(2.0):
            await guard.drain(window=0.1, grace=0.5)
    assert [closed_with(ws) is not None for ws in clients] == [True, True]
    assert len(guard.scheduler) == 0  # the wave deadline went with the flush


async def test_cancel_twice_is_harmless_and_leaves_no_deadline() -> None:
    clock = Clock(0.0)
    guard = Guard(clock=clock, random_source=FixedRandom(0.0))
    clients = [await open_client(guard) for _ in range(2)]
    drain = Drain(guard, window=5.0, code=1012, retry_after=1.0, grace=0.0)
    drain.start()
    # Pending: the second wave, and wave 0's close-handshake timer.
    planned = len(guard.scheduler)
    drain.cancel()
    assert len(guard.scheduler) == planned - 1  # the wave is gone
    drain.cancel()
    assert len(guard.scheduler) == planned - 1
    drain.flush()  # after a cancel: closes what is left at once, arms no wave
    assert len(guard.scheduler) == planned  # only the second close's timer
    await spin()
    assert [closed_with(ws) is not None for ws in clients] == [True, True]
    with anyio.fail_after(1.0):
        await drain.wait()
