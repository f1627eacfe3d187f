"""A scripted mix of closes of every kind, shared by the metrics tests.

``run_mix(guard)`` drives ten connections through ``ScriptedWebSocket``:
guard closes (1009, 1003, 1008, a 1013 shed), a shadow content breach, a
shadow lag shed, client closes, an app close and an app crash. ``EXPECTED``
is what the snapshot must say afterwards, written out by hand.
"""

from __future__ import annotations

from typing import Any

import pytest

from ws_guard import Guard, WSGuardMiddleware, load, rules
from ws_guard.testing import ScriptedWebSocket
from ws_guard.types import Receive, Scope, Send


class ManualGauge(load.LoadGauge):
    """A load gauge whose value the test sets (stands in for the lag sampler)."""

    def __init__(self, limit: float, *, name: str, enforce: bool = True) -> None:
        super().__init__(limit, name=name, enforce=enforce)
        self.current = 0.0

    def value(self) -> float:
        return self.current


async def chatty(scope: Scope, receive: Receive, send: Send) -> None:
    """Echo; "bye" closes with 4000, "crash" raises; one send after a disconnect."""
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            await send({"type": "websocket.send", "text": "after"})  # dropped after a guard close
            return
        text = message.get("text")
        if text == "bye":
            await send({"type": "websocket.close", "code": 4000, "reason": "bye"})
            return
        if text == "crash":
            raise RuntimeError("app crashed on purpose")
        await send({"type": "websocket.send", "text": text, "bytes": message.get("bytes")})


def make_guard(**kwargs: Any) -> tuple[Guard, ManualGauge]:
    lag = ManualGauge(0.25, name="event_loop_lag", enforce=False)
    guard = Guard(
        rules=[
            rules.MaxMessageSize(16),
            rules.MessageTypes(text=True, binary=False),
            rules.Content(lambda m: "spam" not in m, name="no_spam"),
            rules.Content(lambda m: "link" not in m, name="no_links", enforce=False),
        ],
        load=[load.ConnectionCount(limit=2), lag],
        **kwargs,
    )
    return guard, lag


async def _opened(app: Any) -> ScriptedWebSocket:
    ws = ScriptedWebSocket(app)
    await ws.connect()
    await ws.expect("websocket.accept")
    return ws


async def run_mix(guard: Guard, lag: ManualGauge) -> None:
    app = WSGuardMiddleware(chatty, guard=guard)

    for payload, code, reason in (
        ("x" * 20, 1009, "message_too_big"),
        (b"\x00", 1003, "unsupported_data"),
        ("spam", 1008, "content:no_spam"),
    ):
        ws = await _opened(app)
        await ws.send_text("hello")
        await ws.expect("websocket.send", text="hello")
        if isinstance(payload, bytes):
            await ws.send_bytes(payload)
        else:
            await ws.send_text(payload)
        await ws.expect("websocket.close", code=code, reason=reason)
        await ws.finished()

    ws = await _opened(app)  # shadow breach: counted, the message still arrives
    await ws.send_text("link")
    await ws.expect("websocket.send", text="link")
    await ws.disconnect(1001)
    await ws.finished()

    ws = await _opened(app)
    await ws.send_text("bye")
    await ws.expect("websocket.close", code=4000, reason="bye")
    await ws.finished()

    ws = await _opened(app)
    await ws.send_text("crash")
    await ws.expect("websocket.close", code=1011, reason="internal_error")
    with pytest.raises(RuntimeError, match="on purpose"):
        await ws.finished()

    first, second = await _opened(app), await _opened(app)
    shed = ScriptedWebSocket(app)
    await shed.connect()
    await shed.expect("websocket.accept")
    message = await shed.expect("websocket.close", code=1013)
    assert message["reason"].startswith("overloaded; retry-after=")
    await shed.finished()
    for ws in (first, second):
        await ws.disconnect(1000)
        await ws.finished()

    lag.current = 0.5  # past the shadow gauge's limit: counted, connection admitted
    ws = await _opened(app)
    lag.current = 0.0
    await ws.disconnect(1000)
    await ws.finished()


EXPECTED: dict[str, Any] = {
    "closes_by_code": {1009: 1, 1003: 1, 1008: 1, 1001: 1, 4000: 1, 1011: 1, 1013: 1, 1000: 3},
    "closes_by_rule": {
        "message_too_big": 1,
        "unsupported_data": 1,
        "content:no_spam": 1,
        "internal_error": 1,
        "overloaded": 1,
    },
    "closes_by_initiator": {"guard": 4, "client": 4, "app": 2},
    "closes": {
        (1009, "message_too_big", "guard"): 1,
        (1003, "unsupported_data", "guard"): 1,
        (1008, "content:no_spam", "guard"): 1,
        (1013, "overloaded", "guard"): 1,
        (1001, None, "client"): 1,
        (1000, None, "client"): 3,
        (4000, None, "app"): 1,
        (1011, "internal_error", "app"): 1,
    },
    "shadow_breaches_by_rule": {"content:no_links": 1, "overloaded": 1},
    "handshakes_admitted": 9,
    "handshakes_rejected": 1,
    "active_connections": 0,
    "peak_connections": 2,
    "dropped_sends": 3,
    "storage_errors": 0,
    # name, value, limit, tripped, sheds, shadow_sheds
    "gauges": [
        ("connections", 0.0, 2.0, False, 1, 0),
        ("event_loop_lag", 0.0, 0.25, False, 0, 1),
    ],
}
