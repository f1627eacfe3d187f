"""The in-process core on both anyio backends: asyncio and trio.

The same scripted connections (ws_guard.testing) run once per backend:
handshake, message rules, rate, caps, JWT at the handshake and while open,
the first-message hold, guard closes, app crash, app_exit_timeout and a
drain. A Redis storage is refused on trio, at startup and per connection.
"""

from __future__ import annotations

import logging
import re
import signal
import time
from typing import Any

import anyio
import pytest

from tests.support.backends import on_both_backends
from tests.support.jwt_keys import mint
from ws_guard import Guard, WSGuardMiddleware, load, rules
from ws_guard.errors import UnsupportedBackendError
from ws_guard.testing import ManualClock, ScriptedWebSocket
from ws_guard.types import Receive, Scope, Send


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") == "crash":
            raise RuntimeError("app bug")
        info = scope["ws_guard"]
        await send({"type": "websocket.send", "text": f"{info.subject}:{message.get('text')}"})


def scripted(guard: Guard, app: Any = echo, query: bytes = b"") -> ScriptedWebSocket:
    return ScriptedWebSocket(WSGuardMiddleware(app, guard=guard), "/ws", query_string=query)


@on_both_backends
async def test_message_rules_and_rate(anyio_backend: str) -> None:
    guard = Guard(rules=[rules.MaxMessageSize(8), rules.MessageRate("2/second")])
    ws = scripted(guard)
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.send_text("a")
    await ws.expect("websocket.send", text="None:a")
    await ws.send_text("b")
    await ws.send_text("c")
    await ws.expect("websocket.send", text="None:b")
    await ws.expect("websocket.close", code=1008, reason="rate_limited; retry-after=1")
    await ws.finished()
    big = scripted(guard)
    await big.connect()
    await big.expect("websocket.accept")
    await big.send_text("x" * 9)
    await big.expect("websocket.close", code=1009, reason="message_too_big")
    await big.finished()
    assert guard.metrics.snapshot().closes_by_code == {1008: 1, 1009: 1}
    await guard.shutdown()


@on_both_backends
async def test_jwt_handshake_and_expiry_while_open(anyio_backend: str) -> None:
    now = ManualClock(1000.0)
    guard = Guard(
        rules=[rules.JWTAuth("s" * 32, algorithms=["HS256"], token=rules.from_query("t"))],
        clock=now,
    )
    expired = scripted(guard, query=b"t=" + mint("al", key="s" * 32, exp_in=-60).encode())
    await expired.connect()
    await expired.expect("websocket.accept")
    await expired.expect("websocket.close", code=1008, reason="token_expired")
    await expired.finished()
    ws = scripted(guard, query=b"t=" + mint("al", key="s" * 32, exp_in=30).encode())
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.send_text("hi")
    await ws.expect("websocket.send", text="al:hi")
    assert len(guard.scheduler) == 1  # the expiry deadline
    now.advance(31.0)
    guard.scheduler.run_due()
    await ws.expect("websocket.close", code=1008, reason="token_expired")
    await ws.disconnect(1008)  # the server reports the end of the close handshake
    await ws.finished()
    assert guard.metrics.snapshot().closes_by_rule == {"token_expired": 2}
    await guard.shutdown()


@on_both_backends
async def test_first_message_hold_sends_nothing_before_the_verdict(anyio_backend: str) -> None:
    secret = "k" * 32
    guard = Guard(
        rules=[rules.JWTAuth(secret, algorithms=["HS256"], token=rules.from_first_message(5.0))]
    )

    async def greeter(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "history"})  # held until verified
        await echo_rest(scope, receive, send)

    good = scripted(guard, greeter)
    await good.connect()
    await good.expect("websocket.accept")
    await good.send_text(mint("bo", key=secret))
    await good.expect("websocket.send", text="history")
    await good.send_text("x")
    await good.expect("websocket.send", text="bo:x")
    await good.disconnect()
    await good.finished()
    bad = scripted(guard, greeter)
    await bad.connect()
    await bad.expect("websocket.accept")
    await bad.send_text("garbage")
    await bad.expect("websocket.close", code=1008, reason="token_invalid")
    await bad.finished()
    assert [m["type"] for m in bad.sent] == ["websocket.accept", "websocket.close"]
    await guard.shutdown()


async def echo_rest(scope: Scope, receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await send(
            {"type": "websocket.send", "text": f"{scope['ws_guard'].subject}:{message['text']}"}
        )


@on_both_backends
async def test_caps_and_load_in_memory(anyio_backend: str) -> None:
    guard = Guard(
        rules=[rules.MaxConnectionsPerKey(1, key=rules.by_ip)],
        load=[load.ConnectionCount(limit=5)],
    )
    one = scripted(guard)
    await one.connect()
    await one.expect("websocket.accept")
    two = scripted(guard)
    await two.connect()
    await two.expect("websocket.accept")
    await two.expect("websocket.close", code=1008, reason="too_many_connections")
    await two.finished()
    await one.disconnect()
    await one.finished()
    assert guard.metrics.snapshot().active_connections == 0
    await guard.shutdown()


@on_both_backends
async def test_app_crash_closes_1011_and_app_exit_timeout_cancels(anyio_backend: str) -> None:
    guard = Guard(rules=[rules.MaxMessageSize(5)], app_exit_timeout=0.05)
    ws = scripted(guard)
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.send_text("crash")
    await ws.expect("websocket.close", code=1011, reason="internal_error")
    with pytest.raises(RuntimeError, match="app bug"):
        await ws.finished()

    async def deaf(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await receive()  # the oversized message: a disconnect after the guard's close
        await anyio.sleep_forever()  # never reads again: app_exit_timeout stops it

    stuck = scripted(guard, deaf)
    await stuck.connect()
    await stuck.expect("websocket.accept")
    await stuck.send_text("too big")
    await stuck.expect("websocket.close", code=1009, reason="message_too_big")
    await stuck.finished(timeout=5.0)  # returns: the guard's cancel is absorbed
    await guard.shutdown()


@on_both_backends
async def test_drain_closes_1012(anyio_backend: str) -> None:
    guard = Guard()
    ws = scripted(guard)
    await ws.connect()
    await ws.expect("websocket.accept")
    await guard.drain(0.0, retry_after=1.0, grace=2.0)
    message = await ws.next()
    assert message["type"] == "websocket.close"
    assert message["code"] == 1012
    # A 1 to 2 s jittered hint, sent in tenths of a second (docs/load-shedding.md).
    assert re.fullmatch(r"restarting; retry-after=(1(\.[1-9])?|2)", message["reason"]), message
    await ws.disconnect(1012)
    await ws.finished()
    await guard.shutdown()


@on_both_backends
async def test_redis_storage_is_refused_off_asyncio(
    anyio_backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    guard = Guard(rules=[rules.MessageRate("5/second")], storage="redis://127.0.0.1:1/0")
    if anyio_backend == "asyncio":
        guard.lifecycle.check_backend()  # nothing to refuse (no Redis is contacted here)
        return
    with pytest.raises(UnsupportedBackendError, match=r"storage=.*redis.*needs asyncio"):
        await guard.startup()
    assert not guard.started
    # At lifespan startup the error is raised into the app's receive, for the server.
    seen: list[BaseException] = []

    async def lifespan_app(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await receive()
        except UnsupportedBackendError as exc:
            seen.append(exc)

    async def startup() -> dict[str, Any]:
        return {"type": "lifespan.startup"}

    async def ignore(message: dict[str, Any]) -> None:
        raise AssertionError(message)

    lifespan = WSGuardMiddleware(lifespan_app, guard=guard)
    await lifespan({"type": "lifespan", "asgi": {"version": "3.0"}}, startup, ignore)
    assert len(seen) == 1
    assert "redis://127.0.0.1:1/0" in str(seen[0])
    # A server without lifespan: each connection is closed 1011, one error is logged.
    app = WSGuardMiddleware(echo, guard=guard)
    for _ in range(2):
        ws = ScriptedWebSocket(app, "/ws")
        await ws.connect()
        await ws.expect("websocket.accept")
        await ws.expect("websocket.close", code=1011, reason="unsupported_backend")
        await ws.finished()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "needs asyncio" in errors[0].getMessage()
    assert guard.metrics.snapshot().closes_by_code == {1011: 2}


@on_both_backends
async def test_background_gauges_sample_and_shed(anyio_backend: str) -> None:
    """The lag probe and an async gauge's sampler run on the guard's real clock."""
    value = [0.0]

    async def queue_depth() -> float:
        await anyio.sleep(0)
        return value[0]

    lag = load.EventLoopLag(limit=0.1, interval=0.01, window=0.5, hold=0.0)
    depth = load.Gauge(queue_depth, limit=5.0, name="queue", interval=0.01)
    guard = Guard(load=[lag, depth])
    await guard.startup()
    assert lag.running
    value[0] = 9.0
    deadline = anyio.current_time() + 5.0
    while not depth.tripped():  # the sampler's next reading trips it
        assert anyio.current_time() < deadline, "the async gauge was never sampled"
        await anyio.sleep(0.01)
    shed = scripted(guard)
    await shed.connect()
    await shed.expect("websocket.accept")
    message = await shed.expect("websocket.close", code=1013)
    assert message["reason"].startswith("overloaded; retry-after=")
    await shed.finished()
    value[0] = 0.0
    time.sleep(0.2)  # a real stall of the whole event loop: the probe measures it
    while not lag.tripped():
        assert anyio.current_time() < deadline, "the lag probe never saw the stall"
        await anyio.sleep(0.01)
    assert lag.value() >= 0.15
    await guard.shutdown()
    assert not lag.running


@on_both_backends
async def test_drain_signal_drains_then_forwards(anyio_backend: str) -> None:
    forwarded: list[int] = []

    def server_handler(sig: int, frame: object) -> None:
        forwarded.append(sig)

    previous = signal.signal(signal.SIGUSR1, server_handler)
    try:
        guard = Guard(drain_signals=["SIGUSR1"], drain_window=0.0)
        ws = scripted(guard)
        await ws.connect()
        await ws.expect("websocket.accept")
        signal.raise_signal(signal.SIGUSR1)
        message = await ws.next()
        assert message["type"] == "websocket.close"
        assert message["code"] == 1012
        await ws.disconnect(1012)
        await ws.finished()
        deadline = anyio.current_time() + 5.0
        while not forwarded:  # the drain ends, then hands the signal on
            assert anyio.current_time() < deadline, "the signal was never forwarded"
            await anyio.sleep(0.01)
        assert forwarded == [signal.SIGUSR1]
        await guard.shutdown()
        assert signal.getsignal(signal.SIGUSR1) is server_handler
    finally:
        signal.signal(signal.SIGUSR1, previous)
