"""``disconnect(key="unknown")`` closes nothing: "unknown" is no client's address.

A connection without an address (a Unix socket) is listed with
``client_ip="unknown"`` and ``key="unknown:<id>"``. Copying the listed
``client_ip`` into ``disconnect(key=...)`` closed every such connection;
now it closes none, and the listed ``key`` closes exactly that one.
"""

from __future__ import annotations

from tests.support.apps import echo
from ws_guard import Guard, WSGuardMiddleware
from ws_guard.testing import ScriptedWebSocket


async def opened(guard: Guard) -> ScriptedWebSocket:
    ws = ScriptedWebSocket(WSGuardMiddleware(echo, guard=guard), "/ws", client=None)
    await ws.connect()
    await ws.expect("websocket.accept")
    return ws


async def test_unknown_is_not_a_key_and_the_listed_key_picks_one() -> None:
    guard = Guard()
    sockets = [await opened(guard) for _ in range(3)]
    listed = guard.connections()
    assert [s.client_ip for s in listed] == ["unknown"] * 3
    assert await guard.disconnect(key="unknown") == 0
    assert await guard.disconnect(key=listed[0].key) == 1
    assert {s.id for s in guard.connections()} == {s.id for s in listed[1:]}
    snap = guard.metrics.snapshot()
    assert snap.disconnects == 1
    for ws in sockets:
        await ws.disconnect()
        await ws.finished()
