"""One ASGI app with every behaviour the transparency test compares, one path each.

Served by ``tests/e2e/test_transparency.py`` on real servers, bare, or behind
``WSGuardMiddleware(app, guard=Guard())`` (no rules) when the environment has
``GUARDED=1``. Paths:

- ``/raw/<case>``: plain ASGI WebSocket behaviours (:data:`RAW`);
- ``/starlette/...``: Starlette ``WebSocket`` endpoints;
- ``/fastapi/...``: FastAPI endpoints (``/fastapi/room`` needs ``?room=<int>``);
- ``GET /report?id=<id>``: what ``/raw/client-close?id=<id>`` received when
  the client closed, as JSON (404 until it has), read from lifespan state.

Lifespan startup puts ``{"started": "yes", "disconnects": {}}`` into
``scope["state"]``; every scope gets a shallow copy, so the dict is shared.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI
from fastapi import WebSocket as FastAPIWebSocket
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from ws_guard import Guard, WSGuardMiddleware
from ws_guard.types import Message, Receive, Scope, Send

#: An app close reason of exactly 123 bytes (the RFC 6455 §5.5 limit): "é" 61 times, then "x".
REASON_123 = "é" * 61 + "x"
#: An app close reason of 130 bytes; ws_guard cuts it to REASON_123's 123 bytes.
REASON_130 = "é" * 65
#: A plain ASGI WebSocket handler.
Handler = Callable[[Scope, Receive, Send], Awaitable[Any]]


async def _accept(send: Send, **extra: Any) -> None:
    await send({"type": "websocket.accept", **extra})


async def _close(send: Send, code: Any, reason: Any = "") -> None:
    await send({"type": "websocket.close", "code": code, "reason": reason})


async def accept_headers(scope: Scope, receive: Receive, send: Send) -> None:
    """Accept with the client's last offered subprotocol and two extra headers."""
    await receive()
    offered = scope.get("subprotocols", [])
    await _accept(
        send,
        subprotocol=offered[-1] if offered else None,
        headers=[(b"x-extra", b"one"), (b"x-extra-two", b"two")],
    )
    await send({"type": "websocket.send", "text": "accepted"})
    await _close(send, 1000)


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    """Echo text and bytes until the client sends the text ``bye``; then close 1000 ``bye``."""
    await receive()
    await _accept(send)
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") == "bye":
            await _close(send, 1000, "bye")
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"]})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"]})


def closing(code: Any, reason: Any) -> Handler:
    """Accept, send ``hi``, close with *code* and *reason*."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await _accept(send)
        await send({"type": "websocket.send", "text": "hi"})
        await _close(send, code, reason)

    return app


async def close_code(scope: Scope, receive: Receive, send: Send) -> None:
    """Accept, send ``hi``, close with the code in ``?code=`` (any int, valid or not)."""
    code = int(parse_qs(scope["query_string"].decode())["code"][0])
    await closing(code, "")(scope, receive, send)


async def deny(scope: Scope, receive: Receive, send: Send) -> None:
    """Close before accept: the server answers HTTP 403."""
    await receive()
    await _close(send, 1008, "denied")


async def deny_response(scope: Scope, receive: Receive, send: Send) -> None:
    """Deny with the ``websocket.http.response`` extension where the server offers it."""
    await receive()
    if "websocket.http.response" not in scope.get("extensions", {}):
        await _close(send, 1008, "denied")
        return
    await send(
        {
            "type": "websocket.http.response.start",
            "status": 403,
            "headers": [(b"content-type", b"text/plain"), (b"x-denied", b"yes")],
        }
    )
    await send({"type": "websocket.http.response.body", "body": b"go ", "more_body": True})
    await send({"type": "websocket.http.response.body", "body": b"away"})


def _scope_view(scope: Scope) -> dict[str, Any]:
    """The scope as JSON can carry it; the client's random handshake key dropped."""
    headers = [
        [name.decode("latin-1"), value.decode("latin-1")]
        for name, value in scope["headers"]
        if name.lower() != b"sec-websocket-key"
    ]
    state = scope.get("state", {})
    return {
        "type": scope["type"],
        "path": scope["path"],
        "raw_path": scope.get("raw_path", b"").decode("latin-1"),
        "root_path": scope.get("root_path"),
        "query_string": scope["query_string"].decode("latin-1"),
        "headers": headers,
        "subprotocols": scope.get("subprotocols"),
        "client_host": scope["client"][0] if scope.get("client") else None,
        "server": "{}:{}".format(*scope["server"]) if scope.get("server") else None,
        "scheme": scope.get("scheme"),
        "http_version": scope.get("http_version"),
        "asgi": scope.get("asgi"),
        "extensions": {name: repr(value) for name, value in scope.get("extensions", {}).items()},
        "state": sorted(state),
        "keys": sorted(scope),
    }


async def scope_json(scope: Scope, receive: Receive, send: Send) -> None:
    """Accept and send the scope back as JSON."""
    await receive()
    await _accept(send)
    await send({"type": "websocket.send", "text": json.dumps(_scope_view(scope), sort_keys=True)})
    await _close(send, 1000)


async def lifespan_state(scope: Scope, receive: Receive, send: Send) -> None:
    """Accept and send what lifespan startup put into the state."""
    await receive()
    await _accept(send)
    await send({"type": "websocket.send", "text": scope["state"]["started"]})
    await _close(send, 1000)


async def raise_before_accept(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()
    raise RuntimeError("app crash before accept")


async def raise_after_accept(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()
    await _accept(send)
    await send({"type": "websocket.send", "text": "hi"})
    raise RuntimeError("app crash after accept")


async def return_open(scope: Scope, receive: Receive, send: Send) -> None:
    """Return with the connection still open."""
    await receive()
    await _accept(send)
    await send({"type": "websocket.send", "text": "hi"})


async def return_value(scope: Scope, receive: Receive, send: Send) -> str:
    """Close properly, then return a value (ASGI says None; uvicorn logs it)."""
    await receive()
    await _accept(send)
    await _close(send, 1000)
    return "a value"


async def return_value_open(scope: Scope, receive: Receive, send: Send) -> int:
    """Return a value with the connection still open (uvicorn then closes the transport)."""
    await receive()
    await _accept(send)
    await send({"type": "websocket.send", "text": "hi"})
    return 123


async def accept_twice(scope: Scope, receive: Receive, send: Send) -> None:
    """Accept twice: the server raises into the app at the second accept."""
    await receive()
    await _accept(send)
    await send({"type": "websocket.send", "text": "hi"})
    await _accept(send)


async def raise_disconnect(scope: Scope, receive: Receive, send: Send) -> None:
    """Raise Starlette's WebSocketDisconnect itself after accept (no client close)."""
    await receive()
    await _accept(send)
    await send({"type": "websocket.send", "text": "hi"})
    raise WebSocketDisconnect(code=4003, reason="app says bye")


async def eager_accept(scope: Scope, receive: Receive, send: Send) -> None:
    """Accept before reading ``websocket.connect``; report the types of the messages read.

    After a ``websocket.connect`` it reads once more, so the client's message
    is consumed before the close (a close racing the client's send would
    make the client see nothing on either side).
    """
    await _accept(send)
    first = await receive()
    await send({"type": "websocket.send", "text": first["type"]})
    if first["type"] == "websocket.connect":
        second = await receive()
        await send({"type": "websocket.send", "text": second["type"]})
    await _close(send, 1000)


async def client_close(scope: Scope, receive: Receive, send: Send) -> None:
    """Accept, wait for the client's close, store what arrived for ``/report``."""
    await receive()
    await _accept(send)
    message = await receive()
    report = {"type": message["type"], "code": message.get("code"), "reason": message.get("reason")}
    ident = parse_qs(scope["query_string"].decode())["id"][0]
    scope["state"]["disconnects"][ident] = report


RAW: dict[str, Handler] = {
    "accept-headers": accept_headers,
    "echo": echo,
    "close-1000": closing(1000, ""),
    "close-4000-reason": closing(4000, "custom reason"),
    "close-reason-123": closing(4000, REASON_123),
    "close-reason-130": closing(4000, REASON_130),
    "close-code": close_code,
    "deny": deny,
    "deny-response": deny_response,
    "scope": scope_json,
    "lifespan-state": lifespan_state,
    "raise-before-accept": raise_before_accept,
    "raise-after-accept": raise_after_accept,
    "return-open": return_open,
    "return-value": return_value,
    "return-value-open": return_value_open,
    "accept-twice": accept_twice,
    "raise-disconnect": raise_disconnect,
    "eager-accept": eager_accept,
    "client-close": client_close,
}


async def starlette_echo(websocket: WebSocket) -> None:
    await websocket.accept(subprotocol="chat")
    await websocket.send_text(await websocket.receive_text())
    await websocket.send_bytes(await websocket.receive_bytes())
    await websocket.send_json({"state": websocket.state.started})
    await websocket.close(4001, "done")


async def starlette_crash(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text("hi")
    raise ValueError("endpoint bug")


starlette_app = Starlette(
    routes=[
        WebSocketRoute("/starlette/echo", starlette_echo),
        WebSocketRoute("/starlette/crash", starlette_crash),
    ]
)

fastapi_app = FastAPI()


@fastapi_app.websocket("/fastapi/room")
async def room(websocket: FastAPIWebSocket, room: int) -> None:
    await websocket.accept()
    await websocket.send_text(f"room {room}")
    await websocket.close()


async def report(scope: Scope, receive: Receive, send: Send) -> None:
    """``GET /report?id=<id>``: the stored client-close report, or 404."""
    ident = parse_qs(scope["query_string"].decode()).get("id", [""])[0]
    found = scope["state"]["disconnects"].get(ident)
    body = json.dumps(found).encode() if found is not None else b"not yet"
    status = 200 if found is not None else 404
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def lifespan(scope: Scope, receive: Receive, send: Send) -> None:
    while True:
        message: Message = await receive()
        if message["type"] == "lifespan.startup":
            scope["state"]["started"] = "yes"
            scope["state"]["disconnects"] = {}
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def bare(scope: Scope, receive: Receive, send: Send) -> Any:
    """Route by scope type and path prefix."""
    if scope["type"] == "lifespan":
        return await lifespan(scope, receive, send)
    # The path the app routes on, as Starlette's get_route_path reads it:
    # uvicorn puts root_path in front of path, hypercorn does not.
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if root_path and path.startswith(root_path + "/"):
        path = path[len(root_path) :]
    if scope["type"] == "http":
        return await report(scope, receive, send)
    if path.startswith("/raw/") and path[5:] in RAW:
        return await RAW[path[5:]](scope, receive, send)
    if path.startswith("/starlette/"):
        return await starlette_app(scope, receive, send)
    if path.startswith("/fastapi/"):
        return await fastapi_app(scope, receive, send)
    await receive()
    await _close(send, 1000)  # unknown path: HTTP 403
    return None


app: Any = WSGuardMiddleware(bare, guard=Guard()) if os.environ.get("GUARDED") == "1" else bare
