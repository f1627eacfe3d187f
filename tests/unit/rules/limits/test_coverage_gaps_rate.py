"""MessageRate with several rates on a shared key: a branch coverage gap in ``message_rate.py``.

One address, two connections, ``2/second; 3/minute``: both windows are
shared, a window past its end is looked up again, a refused message counts
in every window, and shadow mode reports once per quiet period. In process,
memory storage, injected clock.
"""

from __future__ import annotations

from typing import Any

from tests.support.apps import echo
from tests.support.rate_helpers import Clock
from ws_guard import Guard, WSGuardMiddleware, rules
from ws_guard.testing import ScriptedWebSocket


async def opened(app: Any, ip: str) -> ScriptedWebSocket:
    ws = ScriptedWebSocket(app, client=(ip, 40000))
    await ws.connect()
    await ws.expect("websocket.accept")
    return ws


async def echo_one(ws: ScriptedWebSocket, text: str) -> None:
    await ws.send_text(text)
    await ws.expect("websocket.send", text=text)


async def leave(*clients: ScriptedWebSocket) -> None:
    for ws in clients:
        await ws.disconnect()
        await ws.finished()


async def test_two_rates_by_ip_are_shared_and_the_longest_wait_is_named() -> None:
    clock = Clock(0.0)
    guard = Guard(rules=[rules.MessageRate("2/second; 3/minute", key=rules.by_ip)], clock=clock)
    app = WSGuardMiddleware(echo, guard=guard)
    a1 = await opened(app, "10.0.0.1")
    a2 = await opened(app, "10.0.0.1")
    other = await opened(app, "10.0.0.2")
    await echo_one(a1, "a1-0")
    await echo_one(a2, "a2-0")  # the address's second message in this second
    await a1.send_text("a1-1")  # the third: over 2/second
    await a1.expect("websocket.close", code=1008, reason="rate_limited; retry-after=1")
    await a1.finished()
    # A new second (its window is looked up again), the same minute: the
    # refused message counted too, so the minute's 3 are spent until t=60.
    clock.now = 1.0
    await a2.send_text("a2-1")
    await a2.expect("websocket.close", code=1008, reason="rate_limited; retry-after=59")
    await a2.finished()
    for i in range(2):
        await echo_one(other, f"other-{i}")  # another address, its own windows
    await leave(other)
    snap = guard.metrics.snapshot()
    assert snap.closes_by_rule == {"rate_limited": 2}
    assert snap.closes_by_code == {1008: 2, 1000: 1}


async def test_two_rates_by_ip_in_shadow_mode_report_once_per_quiet_period() -> None:
    clock = Clock(0.0)
    rule = rules.MessageRate("2/second; 3/minute", key=rules.by_ip, enforce=False)
    guard = Guard(rules=[rule], clock=clock)
    app = WSGuardMiddleware(echo, guard=guard)
    a1 = await opened(app, "10.0.0.1")
    a2 = await opened(app, "10.0.0.1")
    for i in range(3):
        await echo_one(a1, f"a1-{i}")  # the third is over 2/second: reported
    await echo_one(a2, "a2-0")  # within the 1 s quiet period: not reported again
    clock.now = 1.0  # quiet period over; the minute is still over its 3
    await echo_one(a2, "a2-1")  # reported, quiet until t=60
    clock.now = 30.0
    await echo_one(a2, "a2-2")  # not reported
    await leave(a1, a2)
    snap = guard.metrics.snapshot()
    assert snap.shadow_breaches_by_rule == {"rate_limited": 2}
    assert snap.closes_by_code == {1000: 2}
