"""Shared-key message rates and the maintenance task, in process, on an injected clock.

Each test here pins a behaviour that a small change to the code could break
without any other test noticing: a shadow-mode rate on a shared key that
stops reporting, two rates on one key that count each other's refusals, a
maintenance job whose exception ends every other job (the sweeps that free
the memory of idle keys among them).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio
import pytest

from tests.support.apps import echo
from tests.support.rate_helpers import Clock, HeaderSubject, echoes, user
from ws_guard import Guard, WSGuardMiddleware, rules
from ws_guard.testing import ScriptedWebSocket


async def opened(app: Any, name: str, ip: str = "10.0.0.1") -> ScriptedWebSocket:
    ws = ScriptedWebSocket(app, client=(ip, 40000), headers=user(name))
    await ws.connect()
    await ws.expect("websocket.accept")
    return ws


async def refused(ws: ScriptedWebSocket, text: str, reason: str) -> None:
    await ws.send_text(text)
    await ws.expect("websocket.close", code=1008, reason=reason)
    await ws.finished()


async def leave(*clients: ScriptedWebSocket) -> None:
    for ws in clients:
        await ws.disconnect()
        await ws.finished()


# -- shadow mode on a shared key --------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "rate"),
    [
        pytest.param(rules.by_user, "2/second", id="by_user-one-rate"),
        pytest.param(rules.by_ip, "2/second", id="by_ip-one-rate"),
        # Two rates in one rule take the combined check, not the single-rate one.
        pytest.param(rules.by_user, "2/second; 100/minute", id="by_user-two-rates"),
    ],
)
async def test_shadow_rate_on_a_shared_key_reports_each_breach_and_keeps_the_connection(
    key: Any, rate: str
) -> None:
    clock = Clock(0.0)
    guard = Guard(
        rules=[HeaderSubject(), rules.MessageRate(rate, key=key, enforce=False)], clock=clock
    )
    app = WSGuardMiddleware(echo, guard=guard)
    a = await opened(app, "alice")
    b = await opened(app, "alice")
    await echoes(a, 2, "a")  # the key's quota for this second is spent
    await echoes(b, 3, "b")  # over it: delivered, reported once for b's connection
    await echoes(a, 3, "c")  # a reports its own breach, once
    assert guard.metrics.snapshot().shadow_breaches_by_rule == {"rate_limited": 2}
    clock.now = 1.0  # a new window: two more within quota, the third reported again
    await echoes(a, 2, "d")
    await echoes(a, 1, "e")
    await leave(a, b)
    snap = guard.metrics.snapshot()
    assert snap.shadow_breaches_by_rule == {"rate_limited": 3}
    assert snap.closes_by_code == {1000: 2}  # both lived on and ended normally
    assert snap.closes_by_rule == {}
    assert snap.active_connections == 0


# -- several rates on one shared key ----------------------------------------------------
def burst_and_sustained(clock: Clock) -> tuple[Any, Guard]:
    guard = Guard(
        rules=[
            HeaderSubject(),
            rules.MessageRate("3/second", key=rules.by_user, name="burst"),
            rules.MessageRate("10/minute", key=rules.by_user, name="sustained"),
        ],
        clock=clock,
    )
    return WSGuardMiddleware(echo, guard=guard), guard


async def test_the_burst_rate_trips_first_and_its_refusal_is_not_counted_by_the_next() -> None:
    clock = Clock(0.0)
    app, guard = burst_and_sustained(clock)
    a = await opened(app, "alice")
    b = await opened(app, "alice")
    await echoes(a, 3, "a")
    # The 4th message in the second: refused by the first rate in order. The
    # second rate never sees it, so alice's minute still holds 7 messages.
    await refused(b, "b0", "rate_limited; retry-after=1")
    c = await opened(app, "alice")
    for second in (1.0, 2.0):
        clock.now = second
        await echoes(c, 3, f"s{second:g}-")
    clock.now = 3.0
    await echoes(c, 1, "last")  # the 10th of the minute
    # The 11th: the burst window (opened at 3.0) has room, the minute has not.
    await refused(c, "eleventh", "rate_limited; retry-after=57")
    d = await opened(app, "alice")  # another connection of alice's: same minute
    await refused(d, "d0", "rate_limited; retry-after=57")
    e = await opened(app, "bob")
    await echoes(e, 3, "bob")  # bob's windows are his own
    await leave(a, e)
    snap = guard.metrics.snapshot()
    assert snap.closes_by_rule == {"burst": 1, "sustained": 2}
    assert snap.closes_by_code == {1008: 3, 1000: 2}
    assert snap.active_connections == 0


async def test_the_sustained_rate_counts_what_the_burst_rate_let_through_in_each_second() -> None:
    clock = Clock(0.0)
    app, guard = burst_and_sustained(clock)
    a = await opened(app, "alice")
    for second in range(3):  # 3 per second for three seconds: 9 of the 10
        clock.now = float(second)
        await echoes(a, 3, f"s{second}-")
    clock.now = 59.5
    await echoes(a, 1, "tenth")
    await refused(a, "eleventh", "rate_limited; retry-after=1")  # 0.5 s left, shown as 1
    # The refused 11th had passed the burst rate, which counted it: at 60.0
    # the minute is fresh, but the second opened at 59.5 holds 2 of its 3.
    clock.now = 60.0
    b = await opened(app, "alice")
    await echoes(b, 1, "new")
    await refused(b, "new1", "rate_limited; retry-after=1")
    clock.now = 60.5  # the burst window ends; the minute opened at 60.0 holds 1
    c = await opened(app, "alice")
    await echoes(c, 3, "c")
    await refused(c, "c3", "rate_limited; retry-after=1")
    snap = guard.metrics.snapshot()
    assert snap.closes_by_rule == {"sustained": 1, "burst": 2}
    assert snap.closes_by_code == {1008: 3}


# -- the maintenance task survives a job that raises -------------------------------------
class Broken(rules.Rule):
    """Registers a maintenance job that raises every time it runs."""

    def __init__(self) -> None:
        super().__init__()
        self.runs = 0

    async def startup(self, guard: Guard) -> None:
        guard.storage.add_job(0.01, self._boom)

    async def _boom(self) -> None:
        self.runs += 1
        raise RuntimeError(f"broken job, run {self.runs}")


async def until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        await anyio.sleep(0.01)


async def test_a_job_that_raises_stops_neither_itself_nor_the_sweeps(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock(0.0)
    broken = Broken()
    rate = rules.MessageRate("5/second", key=rules.by_ip)  # swept every second (its window)
    guard = Guard(rules=[broken, rate], clock=clock)
    await guard.startup()
    try:
        app = WSGuardMiddleware(echo, guard=guard)
        clients = [await opened(app, "u", ip=f"10.0.0.{i}") for i in range(1, 4)]
        for ws in clients:
            await echoes(ws, 1)
        await leave(*clients)
        states = rate._maps[0]
        assert len(states) == 3  # one window per address, alive until its second ends
        await until(lambda: broken.runs >= 3, 2.0, "the broken job running again")
        clock.now = 1.0  # every window has ended: the next sweep drops them all
        await until(lambda: len(states) == 0, 3.0, "the sweep freeing the idle keys")
        runs = broken.runs
        await until(lambda: broken.runs > runs, 2.0, "the broken job still running")
    finally:
        await guard.shutdown()
    failures = [
        r
        for r in caplog.records
        if r.name == "ws_guard" and r.getMessage().startswith("ws_guard maintenance job")
    ]
    assert len(failures) >= 3
    assert all(r.levelno == logging.ERROR and r.exc_info is not None for r in failures)
    assert "broken job, run 1" in str(failures[0].exc_info[1])  # type: ignore[index]
