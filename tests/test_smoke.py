from __future__ import annotations

from apps import echo
from ws_guard import Guard, WSGuardMiddleware, rules
from ws_guard.testing import ScriptedWebSocket


async def test_echo_then_too_big() -> None:
    guard = Guard(rules=[rules.MaxMessageSize(4)])
    ws = ScriptedWebSocket(WSGuardMiddleware(echo, guard=guard))
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.send_text("abcd")
    await ws.expect("websocket.send", text="abcd")
    await ws.send_text("abcde")
    await ws.expect("websocket.close", code=1009, reason="message_too_big")
    await ws.finished()
    snap = guard.metrics.snapshot()
    assert snap.closes_by_code == {1009: 1}
    assert snap.active_connections == 0
