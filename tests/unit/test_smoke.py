from __future__ import annotations

from tests.support.apps import echo
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


async def test_app_close_reason_is_cut_to_123_bytes() -> None:
    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 4000, "reason": "é" * 100})

    guard = Guard()
    ws = ScriptedWebSocket(WSGuardMiddleware(app, guard=guard))
    await ws.connect()
    await ws.expect("websocket.accept")
    close = await ws.expect("websocket.close", code=4000)
    assert close["reason"] == "é" * 61  # 122 bytes: a 2-byte character never split
    await ws.finished()
    assert guard.metrics.snapshot().closes_by_initiator == {"app": 1}
