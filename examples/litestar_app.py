"""A Litestar echo endpoint guarded by ws_guard.

Install, then run this file (or serve it from this file's directory with
``uvicorn litestar_app:app``); the WebSocket is at ws://127.0.0.1:8000/ws:

    python -m pip install ws-guard litestar "uvicorn[standard]"
    python examples/litestar_app.py

ws_guard is an ASGI middleware, so Litestar takes it as any other:
``DefineMiddleware(WSGuardMiddleware, guard=guard)``. Litestar's own refusals
pass through unchanged: a route guard that raises before ``accept()`` (here
``/members``) becomes the server's HTTP 403, and a ``WebSocketException``
raised after it closes with the exception's code and detail.
"""

from typing import Any

import uvicorn
from litestar import Litestar, WebSocket, websocket
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, WebSocketDisconnect
from litestar.handlers import BaseRouteHandler
from litestar.middleware import DefineMiddleware

from ws_guard import Guard, WSGuardMiddleware, rules

guard = Guard(
    rules=[
        rules.MaxMessageSize(64 * 1024),  # 1009 message_too_big
        rules.MessageTypes(text=True, binary=False),  # 1003 unsupported_data
    ],
    paths=["/ws", "/members"],
)


def members_only(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    if "session" not in connection.cookies:
        raise NotAuthorizedException("members only")  # before accept: HTTP 403


@websocket("/ws")
async def echo(socket: WebSocket[Any, Any, Any]) -> None:
    await socket.accept()
    try:
        while True:
            await socket.send_text(await socket.receive_text())
    except WebSocketDisconnect:
        pass  # the client left, or ws_guard closed the connection


@websocket("/members", guards=[members_only])
async def members(socket: WebSocket[Any, Any, Any]) -> None:
    await socket.accept()
    await socket.send_text("welcome")
    await socket.close()


app = Litestar(
    route_handlers=[echo, members],
    middleware=[DefineMiddleware(WSGuardMiddleware, guard=guard)],
)

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=8000)
