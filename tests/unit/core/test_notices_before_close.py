"""ws_guard's own notices reach the client before its close frame, and never after a close.

A client that floods in one burst has its messages buffered in the server:
the app's ``receive()`` returns them one after another without the event
loop running anything in between, so a ``rate.warning`` due at the
threshold is still queued when the message past the limit is refused.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.apps import echo
from tests.support.backends import on_both_backends
from tests.support.jwt_keys import SECRET, mint
from tests.support.rate_helpers import Clock
from ws_guard import Close, Guard, WSGuardMiddleware, rules
from ws_guard._core import asides
from ws_guard.testing import ScriptedWebSocket
from ws_guard.types import Message

ACCEPT: Message = {"type": "websocket.accept"}


def text(value: str) -> Message:
    return {"type": "websocket.send", "text": value}


def close(code: int, reason: str) -> Message:
    return {"type": "websocket.close", "code": code, "reason": reason}


def warning(rule: str, retry_after: int) -> Message:
    return text(json.dumps({"type": "rate.warning", "rule": rule, "retry_after": retry_after}))


async def opened(rule: rules.Rule, clock: Clock) -> tuple[ScriptedWebSocket, Guard]:
    guard = Guard(rules=[rule], clock=clock)
    ws = ScriptedWebSocket(WSGuardMiddleware(echo, guard=guard))
    await ws.connect()
    await ws.expect("websocket.accept")
    return ws, guard


@on_both_backends
async def test_a_message_rate_burst_gets_its_warning_before_the_close(
    anyio_backend: str,
) -> None:
    ws, guard = await opened(rules.MessageRate("4/10 seconds", warn_at=0.5), Clock(0.0))
    for i in range(1, 8):  # the whole burst is buffered before the app reads any of it
        await ws.send_text(f"m{i}")
    await ws.finished()
    assert ws.sent == [
        ACCEPT,
        text("m1"),
        text("m2"),  # the threshold: 2 of 4, the warning is queued here
        text("m3"),
        text("m4"),
        warning("rate_limited", 10),
        close(1008, "rate_limited; retry-after=10"),
    ]
    snap = guard.metrics.snapshot()
    assert snap.closes_by_code == {1008: 1}
    assert snap.closes_by_rule == {"rate_limited": 1}


@on_both_backends
async def test_a_byte_rate_burst_gets_its_warning_before_the_close(
    anyio_backend: str,
) -> None:
    rule = rules.ByteRate("10/10 seconds", warn_at=0.8, name="uploads")
    ws, guard = await opened(rule, Clock(0.0))
    for chunk in ("abcd", "efgh", "ij", "k", "lmn"):
        await ws.send_text(chunk)
    await ws.finished()
    assert ws.sent == [
        ACCEPT,
        text("abcd"),
        text("efgh"),  # 8 of 10: the threshold
        text("ij"),  # 10: the limit, no second warning
        warning("uploads", 10),
        close(1008, "rate_limited; retry-after=10"),
    ]
    assert guard.metrics.snapshot().closes_by_rule == {"uploads": 1}


async def until_closed(ws: ScriptedWebSocket) -> None:
    """Read until ws_guard's close frame, then play the client's answer and wait for the app."""
    while (await ws.next())["type"] != "websocket.close":
        pass
    await ws.disconnect(1008)
    await ws.finished()


async def open_conn() -> tuple[ScriptedWebSocket, Any]:
    guard = Guard(rules=[])
    ws = ScriptedWebSocket(WSGuardMiddleware(echo, guard=guard))
    await ws.connect()
    await ws.expect("websocket.accept")
    return ws, ws.scope["ws_guard"]._conn


@on_both_backends
async def test_a_close_from_a_deadline_sends_the_notices_queued_before_it_in_order(
    anyio_backend: str,
) -> None:
    ws, conn = await open_conn()
    # A deadline's callback: a notice, then a close, in one sync call, as
    # auth.expiring's notice and the expiry do when both fall due at once.
    assert conn.send_soon(text("first")) is True
    assert conn.send_soon(text("second")) is True
    conn.close_soon(Close(1008, "token_expired", "token_expired"))
    assert conn.send_soon(text("late")) is False  # closing: nothing new is queued
    await until_closed(ws)
    assert ws.sent == [ACCEPT, text("first"), text("second"), close(1008, "token_expired")]


@on_both_backends
async def test_a_drain_close_sends_a_queued_notice_first(
    anyio_backend: str,
) -> None:
    ws, conn = await open_conn()
    guard = conn.guard
    assert conn.send_soon(text("notice")) is True
    await guard.drain(grace=0)
    await until_closed(ws)
    assert ws.sent[:2] == [ACCEPT, text("notice")]
    assert len(ws.sent) == 3
    assert ws.sent[2]["code"] == 1012  # its retry-after hint is spread per connection
    assert ws.sent[2]["reason"].startswith("restarting; retry-after=")


@on_both_backends
async def test_a_notice_queued_before_the_apps_close_is_dropped_not_sent_after_it(
    anyio_backend: str,
) -> None:
    async def notice_then_close(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        conn = scope["ws_guard"]._conn
        assert conn.send_soon(text("notice")) is True
        await send({"type": "websocket.close", "code": 4000, "reason": "bye"})

    guard = Guard(rules=[])
    ws = ScriptedWebSocket(WSGuardMiddleware(notice_then_close, guard=guard))
    await ws.connect()
    await ws.finished()
    assert ws.sent == [ACCEPT, close(4000, "bye")]


@on_both_backends
async def test_a_notice_the_client_never_takes_delays_the_close_by_the_grace_only(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(asides, "ASIDE_GRACE", 0.05)
    ws, conn = await open_conn()
    stuck: list[Message] = []
    server_send = conn._send

    async def send(message: Message) -> None:
        if message.get("text") == "stuck":
            stuck.append(message)
            await asides.anyio.sleep_forever()  # a client that stopped reading
        await server_send(message)

    conn._send = send
    assert conn.send_soon(text("stuck")) is True
    assert conn.send_soon(text("dropped")) is True
    conn.close_soon(Close(1008, "rate_limited", "rate_limited"))
    await until_closed(ws)
    assert stuck == [text("stuck")]
    assert ws.sent == [ACCEPT, close(1008, "rate_limited")]
    assert conn._asides.task is None
    assert conn._asides.pending == 0


@on_both_backends
async def test_an_expiring_notice_due_with_the_expiry_comes_before_its_close(
    anyio_backend: str,
) -> None:
    clock = Clock(0.0)
    rule = rules.JWTAuth(SECRET, algorithms=["HS256"], expiring_notice=10)
    guard = Guard(rules=[rule], clock=clock, app_exit_timeout=None)
    ws = ScriptedWebSocket(
        WSGuardMiddleware(echo, guard=guard),
        headers=[(b"authorization", f"Bearer {mint(exp_in=60)}".encode())],
    )
    await ws.connect()
    await ws.expect("websocket.accept")
    clock.now = 3600.0  # a stalled loop: the notice and the expiry fall due in one tick
    assert guard.scheduler.run_due() == 2
    await until_closed(ws)
    notice = text(json.dumps({"type": "auth.expiring", "in": 0}))
    assert ws.sent == [ACCEPT, notice, close(1008, "token_expired")]


@on_both_backends
async def test_an_app_that_gives_up_on_its_receive_cannot_stop_the_close_frame(
    anyio_backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(asides, "ASIDE_GRACE", 0.2)
    ended: list[Message] = []

    async def impatient(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        while True:
            message = None
            with asides.anyio.move_on_after(0.05):  # an app's wait_for(receive(), t)
                message = await receive()
            if message is None:
                continue
            if message["type"] == "websocket.disconnect":
                ended.append(message)
                return
            await send(text(message["text"]))

    guard = Guard(rules=[rules.MessageRate("4/10 seconds", warn_at=0.5)], clock=Clock(0.0))
    ws = ScriptedWebSocket(WSGuardMiddleware(impatient, guard=guard))
    await ws.connect()
    await ws.expect("websocket.accept")
    conn = ws.scope["ws_guard"]._conn
    server_send = conn._send

    async def send(message: Message) -> None:
        if "rate.warning" in message.get("text", ""):
            await asides.anyio.sleep_forever()  # the client stopped reading at the warning
        await server_send(message)

    conn._send = send
    for i in range(1, 6):
        await ws.send_text(f"m{i}")
    # The close waits for the stuck warning longer than the app waits for
    # its receive: the app's give-up leaves the close frame to go out.
    await ws.finished()
    reason = "rate_limited; retry-after=10"
    assert ws.sent == [ACCEPT, text("m1"), text("m2"), text("m3"), text("m4"), close(1008, reason)]
    assert ended == [{"type": "websocket.disconnect", "code": 1008, "reason": reason}]
