"""``ws_guard.testing.ScriptedWebSocket``: the helper fails loudly, never passes a wrong exchange.

A test helper that accepted a message of the wrong kind, or a wrong field,
would let every test built on it pass whatever the guard sent. In process,
against the plain echo app behind a guard.
"""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from tests.support.apps import echo
from ws_guard import Guard, WSGuardMiddleware, rules
from ws_guard.testing import ScriptedWebSocket, _Queue


def guarded() -> ScriptedWebSocket:
    guard = Guard(rules=[rules.MaxMessageSize(4)])
    return ScriptedWebSocket(WSGuardMiddleware(echo, guard=guard))


async def test_expect_raises_on_another_kind_and_names_both() -> None:
    ws = guarded()
    await ws.connect()
    with pytest.raises(AssertionError) as info:
        await ws.expect("websocket.close", code=1000)
    assert str(info.value) == (
        "expected websocket.close {'code': 1000}, got {'type': 'websocket.accept'}"
    )
    await ws.disconnect()
    await ws.finished()


async def test_expect_raises_on_a_field_that_differs() -> None:
    ws = guarded()
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.send_text("hello")  # 5 bytes, over MaxMessageSize(4)
    with pytest.raises(AssertionError) as info:
        await ws.expect("websocket.close", code=1008, reason="message_too_big")
    assert "'code': 1009" in str(info.value)
    assert "'reason': 'message_too_big'" in str(info.value)
    await ws.finished()
    assert ws.closed
    assert [m["type"] for m in ws.sent] == ["websocket.accept", "websocket.close"]


async def test_expect_accepts_the_exact_message_and_returns_it() -> None:
    ws = guarded()
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.send_text("hi")
    message = await ws.expect("websocket.send", text="hi")
    assert message == {"type": "websocket.send", "text": "hi"}
    await ws.disconnect()
    await ws.finished()
    assert not ws.closed  # the client left; nobody sent a close


async def test_finished_before_connect_is_an_error() -> None:
    ws = guarded()
    with pytest.raises(RuntimeError, match=r"^connect\(\) was not called$"):
        await ws.finished()


async def test_send_bytes_reaches_the_app_as_a_binary_message() -> None:
    ws = guarded()
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.send_bytes(b"\x00\xff")
    await ws.expect("websocket.send", bytes=b"\x00\xff")
    await ws.send_bytes(b"12345")  # binary counts against MaxMessageSize(4) too
    await ws.expect("websocket.close", code=1009, reason="message_too_big")
    await ws.finished()


async def _until_waiting(queue: Any) -> None:
    with anyio.fail_after(2):
        while queue._ready is None:
            await anyio.sleep(0)


async def test_an_idle_queue_keeps_no_event_and_every_reader_gets_its_message() -> None:
    """After a read that waited, the queue drops its event (``jwt_idle.py`` counts
    memory per idle connection), but never one that another reader waits on."""
    queue = _Queue()
    got: list[Any] = []

    async def read(times: int) -> None:
        for _ in range(times):
            got.append(await queue.get())

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(read, 2)  # reads again at once, while the other reader wakes
            tg.start_soon(read, 1)
            for n in range(3):
                await _until_waiting(queue)
                queue.put_nowait({"type": "message", "n": n})
                while len(got) <= n:
                    await anyio.sleep(0)
        assert sorted(m["n"] for m in got) == [0, 1, 2]
        assert queue._ready is None
