"""Routing of scopes, guarded paths, lifespan and lazy startup."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from tests.support.apps import Recorder, echo
from tests.support.helpers import Lifecycle, RawServer, websocket_scope
from ws_guard import ConnectionInfo, Guard, WSGuardMiddleware, connection_info
from ws_guard.testing import ScriptedWebSocket, _Queue
from ws_guard.types import Message, Receive, Scope, Send


class Spy:
    """An app that records the exact receive/send callables it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[Scope, Receive, Send]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls.append((scope, receive, send))
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.close", "code": 1000})


async def test_http_scope_passes_through_untouched() -> None:
    spy = Spy()
    middleware = WSGuardMiddleware(spy, guard=Guard())

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        pass

    scope = {"type": "http", "path": "/ws", "headers": []}
    await middleware(scope, receive, send)
    assert spy.calls == [(scope, receive, send)]
    assert "ws_guard" not in scope


@pytest.mark.parametrize(
    ("path", "is_guarded"),
    [("/ws", True), ("/ws/", True), ("/ws/room/1", True), ("/wsx", False), ("/", False)],
)
async def test_paths_are_segment_prefixes(path: str, is_guarded: bool) -> None:
    guard = Guard(paths=["/ws"])
    assert guard.guards_path(path) is is_guarded
    spy = Spy()
    server = RawServer(WSGuardMiddleware(spy, guard=guard), websocket_scope(path))
    await server.run({"type": "websocket.connect"})
    ((scope, receive, send),) = spy.calls
    if is_guarded:
        assert isinstance(scope["ws_guard"], ConnectionInfo)
        assert receive != server.receive
        assert guard.metrics.snapshot().handshakes_admitted == 1
    else:
        assert "ws_guard" not in scope
        assert (receive, send) == (server.receive, server.send)
        assert guard.metrics.snapshot().handshakes_admitted == 0


def test_trailing_slash_prefix_and_default_guard_everything() -> None:
    guard = Guard(paths=["/ws/", "/chat"])
    assert guard.guards_path("/ws/a")
    assert guard.guards_path("/chat/a")
    assert not guard.guards_path("/chatter")
    assert Guard().guards_path("/anything")


async def test_client_ip_is_the_handshake_peer_even_read_after_the_app_rewrote_the_scope() -> None:
    """The address is parsed on first read, but from the peer the handshake had."""
    seen: list[str] = []

    async def rewriting(scope: dict, receive: object, send: object) -> None:
        await receive()  # type: ignore[operator]
        await send({"type": "websocket.accept"})  # type: ignore[operator]
        scope["client"] = ("203.0.113.9", 2)
        seen.append(connection_info(scope).client_ip)  # type: ignore[union-attr]
        await receive()  # type: ignore[operator]

    for peer, expected in ((("::ffff:198.51.100.7", 1), "198.51.100.7"), (None, "unknown")):
        ws = ScriptedWebSocket(WSGuardMiddleware(rewriting, guard=Guard()), client=peer)
        await ws.connect()
        await ws.expect("websocket.accept")
        await ws.disconnect()
        await ws.finished()
        assert seen.pop() == expected


async def test_connection_info_in_scope() -> None:
    app = Recorder()
    guard = Guard()
    ws = ScriptedWebSocket(WSGuardMiddleware(app, guard=guard), client=("198.51.100.4", 1))
    await ws.connect()
    await ws.expect("websocket.accept")
    info = connection_info(app.scopes[0])
    assert info is not None
    assert info.client_ip == "198.51.100.4"
    assert info.subject is None
    assert info.claims is None
    assert info.state == "open"
    assert len(info.id) == 32
    assert "198.51.100.4" in repr(info)
    await ws.disconnect()
    await ws.finished()
    assert info.state == "closed"
    assert connection_info({"type": "websocket"}) is None


async def run_lifespan(app: Any) -> list[Message]:
    inbox = _Queue()
    inbox.put_nowait({"type": "lifespan.startup"})
    inbox.put_nowait({"type": "lifespan.shutdown"})
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
    with anyio.fail_after(2):
        await app(scope, inbox.get, send)
    return sent


async def test_lifespan_starts_and_stops_the_guard_before_the_app_hears() -> None:
    rule = Lifecycle()
    guard = Guard(rules=[rule])
    seen: list[tuple[str, list[str], bool]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            seen.append((message["type"], list(rule.events), guard.started))
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return

    sent = await run_lifespan(WSGuardMiddleware(app, guard=guard))
    assert seen == [
        ("lifespan.startup", ["startup"], True),
        ("lifespan.shutdown", ["startup", "shutdown"], False),
    ]
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


async def test_lazy_startup_on_first_connection_runs_once() -> None:
    rule = Lifecycle()
    guard = Guard(rules=[rule])
    middleware = WSGuardMiddleware(echo, guard=guard)
    assert not guard.started
    sockets = [ScriptedWebSocket(middleware) for _ in range(3)]
    for ws in sockets:
        await ws.connect()
    for ws in sockets:
        await ws.expect("websocket.accept")
    assert rule.events == ["startup"]
    assert guard.started
    for ws in sockets:
        await ws.disconnect()
        await ws.finished()
    await guard.shutdown()
    await guard.shutdown()  # idempotent
    assert rule.events == ["startup", "shutdown"]
    await guard.startup()  # may start again
    assert rule.events == ["startup", "shutdown", "startup"]


async def test_lifespan_then_connection_does_not_start_twice() -> None:
    rule = Lifecycle()
    guard = Guard(rules=[rule])
    await guard.startup()
    ws = ScriptedWebSocket(WSGuardMiddleware(echo, guard=guard))
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.disconnect()
    await ws.finished()
    assert rule.events == ["startup"]
