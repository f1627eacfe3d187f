"""First-message auth end to end: nothing reaches a client before its token is verified.

Real uvicorn on 127.0.0.1 (all three WebSocket stacks), the real
``websockets`` client. The app sends "history" right after ``accept()``; a
client that sends no token, or a bad one, must get nothing but the close.
A second client address is a second loopback source address (127.0.0.2),
so the per-address bound is tested on real sockets.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support.apps import http_ok
from tests.support.jwt_keys import SECRET, mint
from tests.support.servers import UVICORN_WS, ServerThread, serve
from ws_guard import Guard, WSGuardMiddleware, rules
from ws_guard.types import Message, Receive, Scope, Send

pytestmark = pytest.mark.e2e

TIMEOUT = 0.3
BEFORE: dict[str, list[Message]] = {
    "/ws": [{"type": "websocket.send", "text": "history"}],
    "/many": [
        {"type": "websocket.send", "text": "one"},
        {"type": "websocket.send", "bytes": b"\x00two"},
        {"type": "websocket.send", "text": "three"},
    ],
    "/close": [],
}


async def room(scope: Scope, receive: Receive, send: Send) -> None:
    """Accept, send what BEFORE lists for the path at once, then echo text (``/close``: close)."""
    if scope["type"] != "websocket":
        await http_ok(scope, receive, send)
        return
    await receive()
    await send({"type": "websocket.accept"})
    for message in BEFORE[scope["path"]]:
        await send(message)
    if scope["path"] == "/close":
        await send({"type": "websocket.close", "code": 4000, "reason": "room full"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "text": f"echo:{message.get('text')}"})


def make_guard(timeout: float = TIMEOUT, **bounds: Any) -> Guard:
    source = rules.from_first_message(timeout, **bounds)
    return Guard(rules=[rules.JWTAuth(SECRET, algorithms=["HS256"], token=source)])


@pytest.fixture(params=UVICORN_WS)
def server(request: pytest.FixtureRequest) -> Iterator[tuple[ServerThread, Guard]]:
    guard = make_guard()
    with serve(WSGuardMiddleware(room, guard=guard), request.param) as thread:
        yield thread, guard


def dial(thread: ServerThread, path: str = "/ws", source: str = "127.0.0.1") -> connect:
    return connect(f"{thread.url}{path}", proxy=None, local_addr=(source, 0))


async def until_closed(ws: ClientConnection, timeout: float = 5.0) -> tuple[list[Any], int, str]:
    """Every frame the client gets, then the server's close code and reason."""
    frames: list[Any] = []
    try:
        while True:
            frames.append(await asyncio.wait_for(ws.recv(), timeout))
    except ConnectionClosed as exc:
        received = exc.rcvd
    assert received is not None, "the server dropped TCP without a close frame"
    return frames, received.code, received.reason


async def poll(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def test_no_token_gets_nothing_but_token_missing(server: tuple[ServerThread, Guard]) -> None:
    thread, guard = server
    async with dial(thread) as ws:
        started = time.monotonic()
        frames, code, reason = await until_closed(ws)
        waited = time.monotonic() - started
    assert (frames, code, reason) == ([], 1008, "token_missing")
    assert TIMEOUT - 0.05 <= waited <= TIMEOUT + 1.0
    await poll(lambda: guard.metrics.snapshot().active_connections == 0)
    snap = guard.metrics.snapshot()
    assert (snap.pending_auth, snap.dropped_sends) == (0, 1)


async def test_valid_token_gets_history_first_then_echo(server: tuple[ServerThread, Guard]) -> None:
    thread, _ = server
    async with dial(thread) as ws:
        await ws.send(mint("alice"))
        assert await ws.recv() == "history"
        await ws.send("hi")
        assert await ws.recv() == "echo:hi"


@pytest.mark.parametrize(
    ("first", "reason"),
    [("junk", "token_invalid"), (mint("bob", exp_in=-5), "token_expired")],
)
async def test_bad_token_gets_no_history(
    server: tuple[ServerThread, Guard], first: str, reason: str
) -> None:
    thread, guard = server
    async with dial(thread) as ws:
        await ws.send(first)
        frames, code, close_reason = await until_closed(ws)
    assert (frames, code, close_reason) == ([], 1008, reason)
    await poll(lambda: guard.metrics.snapshot().active_connections == 0)
    assert guard.metrics.snapshot().dropped_sends == 1


async def test_several_sends_and_a_binary_one_wait_and_keep_their_order(
    server: tuple[ServerThread, Guard],
) -> None:
    thread, _ = server
    async with dial(thread, "/many") as ws:
        frames, code, reason = await until_closed(ws)
    assert (frames, code, reason) == ([], 1008, "token_missing")
    async with dial(thread, "/many") as ws:
        await ws.send(f'{{"type": "auth", "token": "{mint()}"}}')
        await ws.send("hi")
        got = [await ws.recv() for _ in range(4)]
    assert got == ["one", b"\x00two", "three", "echo:hi"]


async def test_an_app_close_before_the_token_reaches_the_client(
    server: tuple[ServerThread, Guard],
) -> None:
    thread, guard = server
    async with dial(thread, "/close") as ws:
        frames, code, reason = await until_closed(ws)
    assert (frames, code, reason) == ([], 4000, "room full")
    await poll(lambda: guard.metrics.snapshot().active_connections == 0)
    assert guard.metrics.snapshot().pending_auth == 0


@pytest.mark.parametrize("stack", UVICORN_WS)
async def test_per_address_bound_refuses_1008_while_another_address_connects(stack: str) -> None:
    guard = make_guard(10.0, max_pending=5, max_pending_per_ip=3)  # they outlive the test
    with serve(WSGuardMiddleware(room, guard=guard), stack) as thread:
        held = [await dial(thread) for _ in range(3)]
        await poll(lambda: guard.metrics.snapshot().pending_auth == 3)
        async with dial(thread) as ws:
            assert await until_closed(ws) == ([], 1008, "too_many_unauthenticated")
        async with dial(thread, source="127.0.0.2") as other:
            await poll(lambda: guard.metrics.snapshot().pending_auth == 4)
            await other.send(mint())
            assert await other.recv() == "history"
            assert guard.metrics.snapshot().pending_auth == 3
        for ws in held:
            await ws.close()
        await poll(lambda: guard.metrics.snapshot().pending_auth == 0)
        await poll(lambda: guard.metrics.snapshot().active_connections == 0)
        assert guard.metrics.snapshot().closes_by_rule == {"too_many_unauthenticated": 1}


@pytest.mark.parametrize("stack", UVICORN_WS)
async def test_total_bound_refuses_1013_and_the_gauge_returns_to_zero(stack: str) -> None:
    guard = make_guard(10.0, max_pending=4, max_pending_per_ip=2)
    with serve(WSGuardMiddleware(room, guard=guard), stack) as thread:
        held = [await dial(thread, source=f"127.0.0.{2 + i // 2}") for i in range(4)]
        await poll(lambda: guard.metrics.snapshot().pending_auth == 4)
        async with dial(thread, source="127.0.0.9") as ws:
            assert await until_closed(ws) == ([], 1013, "overloaded; retry-after=10")
        for ws in held:
            await ws.close()
        await poll(lambda: guard.metrics.snapshot().pending_auth == 0)
        await poll(lambda: guard.metrics.snapshot().active_connections == 0)
        assert guard.metrics.snapshot().closes_by_rule == {"pending_auth": 1}
