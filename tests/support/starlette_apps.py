"""A guarded Starlette echo, for tests that drive Starlette's TestClient on either backend."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from ws_guard import Guard, WSGuardMiddleware


async def _echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            await websocket.send_text("echo:" + await websocket.receive_text())
    except WebSocketDisconnect:
        pass


def starlette_echo(guard: Guard) -> Starlette:
    """``/ws`` behind *guard*: each text comes back as ``"echo:<text>"``."""
    return Starlette(
        routes=[WebSocketRoute("/ws", _echo)],
        middleware=[Middleware(WSGuardMiddleware, guard=guard)],
    )
