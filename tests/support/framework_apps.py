"""The same small WebSocket app in every framework ws_guard is tested with.

Each factory takes a :class:`~ws_guard.Guard` or ``None`` (the bare app, to
compare with) and returns an ASGI app with three WebSocket endpoints:

``/ws``
    an echo: each text message comes back as ``"echo:<text>"``;
``/deny``
    the framework's own refusal *before* accept (a guard, a validation
    error, an abort, a consumer closing in ``connect``). A server turns a
    close before accept into an HTTP response (403 on uvicorn, see
    docs/servers.md); Quart answers with its own HTTP response through the
    ``websocket.http.response`` extension;
``/close``
    the framework's own close *after* accept, with code 4403 and reason
    ``"forbidden"``, through the framework's API for it;
``/validate`` (Litestar only; FastAPI's ``/deny`` is its validation close)
    a required ``room: int`` query parameter: without it, Litestar's
    parameter validation closes before accept; with ``?room=3`` the handler
    sends ``"room:3"`` and closes with 1000.

:data:`DENIED` (per framework) and :data:`CLOSED_BY_APP` are what the real
``websockets`` client sees at ``/deny`` and ``/close`` (the value
:func:`tests.support.clients.outcome` returns), bare and behind a guard alike.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import fastapi
import litestar
import litestar.exceptions
import quart
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler
from litestar.middleware import DefineMiddleware
from starlette.applications import Starlette
from starlette.exceptions import WebSocketException
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from ws_guard import Guard, WSGuardMiddleware
from ws_guard.types import ASGIApp

CLOSE_CODE = 4403
CLOSE_REASON = "forbidden"
#: What the client sees at ``/close`` in every framework: the app's own close frame.
CLOSED_BY_APP = ("closed", (), (CLOSE_CODE, CLOSE_REASON))


def _guarded(app: ASGIApp, guard: Guard | None) -> ASGIApp:
    return app if guard is None else WSGuardMiddleware(app, guard=guard)


async def lifespan(scope: Any, receive: Any, send: Any) -> None:
    """Answer the ASGI lifespan, so the server runs ws_guard's startup and drain through it."""
    while True:
        message = await receive()
        await send({"type": message["type"] + ".complete"})
        if message["type"] == "lifespan.shutdown":
            return


def starlette_app(guard: Guard | None) -> ASGIApp:
    """Starlette: ``WebSocketException`` before accept, ``websocket.close`` after."""

    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                await websocket.send_text("echo:" + await websocket.receive_text())
        except WebSocketDisconnect:
            pass

    async def deny(websocket: WebSocket) -> None:
        raise WebSocketException(code=1008, reason="not allowed")

    async def close(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.close(CLOSE_CODE, CLOSE_REASON)

    routes = [
        WebSocketRoute("/ws", echo),
        WebSocketRoute("/deny", deny),
        WebSocketRoute("/close", close),
    ]
    return _guarded(Starlette(routes=routes), guard)


def fastapi_app(guard: Guard | None) -> ASGIApp:
    """FastAPI: a missing required query parameter (its validation close), ``close`` after."""
    app = fastapi.FastAPI()
    if guard is not None:
        app.add_middleware(WSGuardMiddleware, guard=guard)

    @app.websocket("/ws")
    async def echo(websocket: fastapi.WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                await websocket.send_text("echo:" + await websocket.receive_text())
        except fastapi.WebSocketDisconnect:
            pass

    @app.websocket("/deny")
    async def deny(websocket: fastapi.WebSocket, room: int) -> None:
        # Never runs: /deny carries no ?room=, so FastAPI closes before accept
        # with 1008 and its list of validation errors as the reason.
        await websocket.accept()

    @app.websocket("/close")
    async def close(websocket: fastapi.WebSocket) -> None:
        await websocket.accept()
        await websocket.close(CLOSE_CODE, CLOSE_REASON)

    return app


def litestar_app(guard: Guard | None) -> ASGIApp:
    """Litestar: a route guard raising ``NotAuthorizedException``, ``WebSocketException`` after."""

    def members_only(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        raise litestar.exceptions.NotAuthorizedException("members only")

    @litestar.websocket("/ws")
    async def echo(socket: litestar.WebSocket[Any, Any, Any]) -> None:
        await socket.accept()
        try:
            while True:
                await socket.send_text("echo:" + await socket.receive_text())
        except litestar.exceptions.WebSocketDisconnect:
            pass

    @litestar.websocket("/deny", guards=[members_only])
    async def deny(socket: litestar.WebSocket[Any, Any, Any]) -> None:
        await socket.accept()  # never runs: the guard refuses first

    @litestar.websocket("/validate")
    async def validate(socket: litestar.WebSocket[Any, Any, Any], room: int) -> None:
        # Never runs without ?room=<int>: Litestar's validation closes before accept.
        # The plain annotation works on every Litestar 2.x (newer ones warn, the
        # test module ignores that warning); QueryParameter needs a recent one.
        await socket.accept()
        await socket.send_text(f"room:{room}")
        await socket.close()

    @litestar.websocket("/close")
    async def close(socket: litestar.WebSocket[Any, Any, Any]) -> None:
        await socket.accept()
        # Litestar's exception middleware turns this into websocket.close(code, detail).
        raise litestar.exceptions.WebSocketException(detail=CLOSE_REASON, code=CLOSE_CODE)

    middleware = [] if guard is None else [DefineMiddleware(WSGuardMiddleware, guard=guard)]
    handlers = [echo, deny, validate, close]
    return litestar.Litestar(route_handlers=handlers, middleware=middleware)


def channels_app(guard: Guard | None) -> ASGIApp:
    """Django Channels: ``ProtocolTypeRouter`` with ``AuthMiddlewareStack``; the guard in front.

    ``/deny`` is a consumer that closes in ``connect`` when
    ``AuthMiddlewareStack`` found no logged-in user, and else sends
    ``"welcome:<user id>"`` and closes (a session cookie from
    :func:`tests.support.django_settings.session_cookie` logs one in);
    ``/close`` accepts, then closes.
    """
    from tests.support.django_settings import configure

    configure()
    from channels.auth import AuthMiddlewareStack
    from channels.generic.websocket import AsyncWebsocketConsumer
    from channels.routing import ProtocolTypeRouter, URLRouter
    from django.core.asgi import get_asgi_application
    from django.urls import path

    class Echo(AsyncWebsocketConsumer):
        async def receive(self, text_data: str | None = None, bytes_data: Any = None) -> None:
            await self.send(text_data=f"echo:{text_data}")

    class MembersOnly(AsyncWebsocketConsumer):
        async def connect(self) -> None:
            user = self.scope["user"]  # set by AuthMiddlewareStack
            if not user.is_authenticated:
                await self.close()  # before accept: the server answers 403
                return
            await self.accept()
            await self.send(text_data=f"welcome:{user.pk}")
            await self.close()

    class Close(AsyncWebsocketConsumer):
        async def connect(self) -> None:
            await self.accept()
            await self.close(code=CLOSE_CODE, reason=CLOSE_REASON)

    router = ProtocolTypeRouter(
        {
            "http": get_asgi_application(),
            # ProtocolTypeRouter routes no lifespan by itself: uvicorn's
            # --lifespan on would refuse to start, auto would run without one.
            "lifespan": lifespan,
            "websocket": AuthMiddlewareStack(
                URLRouter(
                    [
                        path("ws", Echo.as_asgi()),
                        path("deny", MembersOnly.as_asgi()),
                        path("close", Close.as_asgi()),
                    ]
                )
            ),
        }
    )
    return _guarded(router, guard)


def quart_app(guard: Guard | None) -> ASGIApp:
    """Quart: ``abort(403)`` before accept (an HTTP response), ``websocket.close`` after."""
    app = quart.Quart(__name__)

    @app.websocket("/ws")
    async def echo() -> None:
        while True:  # Quart accepts on the first receive; a close ends the task
            await quart.websocket.send("echo:" + await quart.websocket.receive())

    @app.websocket("/deny")
    async def deny() -> None:
        quart.abort(403)

    @app.websocket("/close")
    async def close() -> None:
        await quart.websocket.accept()
        await quart.websocket.close(CLOSE_CODE, CLOSE_REASON)

    if guard is not None:
        # Quart's own way to wrap its ASGI app; app.run() and `quart run` keep working.
        app.asgi_app = WSGuardMiddleware(app.asgi_app, guard=guard)  # type: ignore[method-assign]
    return app  # type: ignore[return-value]


def raw_app(guard: Guard | None) -> ASGIApp:
    """Plain ASGI, no framework: ``websocket.close`` before accept, and after."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await lifespan(scope, receive, send)
        if scope["type"] != "websocket" or await receive() != {"type": "websocket.connect"}:
            return
        if scope["path"] == "/deny":
            await send({"type": "websocket.close", "code": 1008, "reason": "not allowed"})
            return
        await send({"type": "websocket.accept"})
        if scope["path"] == "/close":
            await send({"type": "websocket.close", "code": CLOSE_CODE, "reason": CLOSE_REASON})
            return
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": f"echo:{message.get('text')}"})

    return _guarded(app, guard)


#: Framework id -> factory(guard or None) -> ASGI app.
FACTORIES: dict[str, Callable[[Guard | None], ASGIApp]] = {
    "starlette": starlette_app,
    "fastapi": fastapi_app,
    "litestar": litestar_app,
    "channels": channels_app,
    "quart": quart_app,
    "raw": raw_app,
}

#: What the client sees at /deny: uvicorn turns a close before accept into
#: HTTP 403; Quart's abort(403) is its own 403 response.
DENIED: dict[str, tuple[Any, ...]] = dict.fromkeys(FACTORIES, ("http", 403))
