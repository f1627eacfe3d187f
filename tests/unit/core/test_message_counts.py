"""``Guard(count_messages=True)``: messages in and out per connection in ``connections()``.

Off by default: counting costs a coroutine frame per message each way, so a
guard that does not count hands the app the connection's own receive and
send, and ``connections()`` shows ``None`` for both counts.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.apps import echo
from ws_guard import ConfigurationError, Guard, WSGuardMiddleware, rules
from ws_guard.testing import ScriptedWebSocket
from ws_guard.types import Receive, Scope, Send


async def opened(guard: Guard, app: Any = echo) -> ScriptedWebSocket:
    ws = ScriptedWebSocket(WSGuardMiddleware(app, guard=guard))
    await ws.connect()
    await ws.expect("websocket.accept")
    return ws


async def test_counted_messages_in_and_out_of_an_echo() -> None:
    guard = Guard(count_messages=True)
    ws = await opened(guard)
    ((snap,),) = [guard.connections()]
    assert (snap.messages_in, snap.messages_out) == (0, 0)
    for i in range(3):
        await ws.send_text(f"m{i}")
        await ws.expect("websocket.send", text=f"m{i}")
    await ws.send_bytes(b"\x00\x01")
    await ws.expect("websocket.send", bytes=b"\x00\x01")
    ((snap,),) = [guard.connections()]
    assert (snap.messages_in, snap.messages_out) == (4, 4)  # the accept is no data message
    await ws.disconnect()
    await ws.finished()
    assert guard.connections() == []


async def test_a_refused_message_is_not_counted_in_nor_a_dropped_send_out() -> None:
    sends: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":
                # After the guard's close: this send is dropped by ws_guard.
                await send({"type": "websocket.send", "text": "too late"})
                sends.append("too late")
                return
            await send({"type": "websocket.send", "text": message["text"]})

    guard = Guard(rules=[rules.MessageTypes(text=True, binary=False)], count_messages=True)
    ws = await opened(guard, app)
    await ws.send_text("ok")
    await ws.expect("websocket.send", text="ok")
    conn = next(iter(guard.live_connections))
    await ws.send_bytes(b"no")  # refused: closes 1003, never reaches the app
    await ws.expect("websocket.close", code=1003)
    await ws.disconnect(1003)
    await ws.finished()
    assert sends == ["too late"]
    assert (conn.messages_in, conn.messages_out) == (1, 1)


async def test_without_counting_the_app_gets_the_plain_paths_and_no_counts() -> None:
    seen: dict[str, str] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.update(receive=receive.__name__, send=send.__name__)
        await echo(scope, receive, send)

    plain, counting = Guard(), Guard(count_messages=True)
    ws = await opened(plain, app)
    await ws.send_text("hi")
    await ws.expect("websocket.send", text="hi")
    ((snap,),) = [plain.connections()]
    assert (snap.messages_in, snap.messages_out) == (None, None)
    assert seen == {"receive": "receive", "send": "send"}
    await ws.disconnect()
    await ws.finished()
    ws = await opened(counting, app)
    assert seen == {"receive": "receive_counted", "send": "send_counted"}
    await ws.disconnect()
    await ws.finished()


@pytest.mark.parametrize("value", [1, "yes", None, 0.0])
def test_count_messages_takes_only_a_bool(value: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        Guard(count_messages=value)  # type: ignore[arg-type]
    assert str(info.value) == f"count_messages must be True or False, not {value!r}"
