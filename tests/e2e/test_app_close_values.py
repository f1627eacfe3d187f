"""App closes that ws_guard cannot read pass to the server untouched, on real servers.

FastAPI closes a WebSocket whose parameters fail validation with a *list* of
errors as the reason (``WebSocketRequestValidationError``); other apps pass a
``None`` code or a bytes reason. Bare uvicorn handles each in its own way (a
close before accept becomes HTTP 403). Behind a guard with no rules the
client must see exactly the same, and ws_guard must not raise inside the
app's ``send()``: before, ``truncate_reason`` called ``.encode()`` on the list
and the client got HTTP 500.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from fastapi import FastAPI, WebSocket

from tests.support.clients import outcome
from tests.support.servers import UVICORN_WS, serve
from ws_guard import Guard, WSGuardMiddleware
from ws_guard.types import Receive, Scope, Send

pytestmark = pytest.mark.e2e


def fastapi_app() -> FastAPI:
    app = FastAPI()

    @app.websocket("/ws")
    async def room(websocket: WebSocket, room: int) -> None:  # room: a required query param
        await websocket.accept()
        await websocket.send_text(f"room {room}")
        await websocket.close()

    return app


def closing_app(code: Any, reason: Any, *, accept: bool) -> Any:
    """A plain ASGI app that closes with exactly this code and reason."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            return
        await receive()  # websocket.connect
        if accept:
            await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": code, "reason": reason})

    return app


async def seen(app: Any, ws: str, path: str, caplog: pytest.LogCaptureFixture) -> tuple[Any, ...]:
    caplog.clear()
    with caplog.at_level(logging.ERROR), serve(app, ws) as server:
        result = await outcome(server.url + path)
    crashes = [r for r in caplog.records if "Exception in ASGI application" in r.getMessage()]
    return result, len(crashes)


@pytest.mark.parametrize("ws", UVICORN_WS)
async def test_fastapi_validation_close_reaches_the_client_as_bare(
    ws: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = fastapi_app()
    guard = Guard()
    bare = await seen(app, ws, "/ws", caplog)
    guarded = await seen(WSGuardMiddleware(app, guard=guard), ws, "/ws", caplog)
    assert bare == (("http", 403), 0)
    assert guarded == bare
    # Valid parameters still work, guarded as bare.
    assert await seen(WSGuardMiddleware(app, guard=Guard()), ws, "/ws?room=7", caplog) == (
        ("closed", ("room 7",), (1000, "")),
        0,
    )


@pytest.mark.parametrize("ws", UVICORN_WS)
@pytest.mark.parametrize(
    ("code", "reason", "accept"),
    [
        pytest.param(1008, ["a", "list"], False, id="list-reason-before-accept"),
        pytest.param(1008, b"bytes", False, id="bytes-reason-before-accept"),
        pytest.param(None, "why", False, id="none-code-before-accept"),
        pytest.param(4000, ["a", "list"], True, id="list-reason-after-accept"),
        pytest.param(4000, b"bytes", True, id="bytes-reason-after-accept"),
    ],
)
async def test_unreadable_close_values_pass_through_as_bare(
    ws: str, code: Any, reason: Any, accept: bool, caplog: pytest.LogCaptureFixture
) -> None:
    app = closing_app(code, reason, accept=accept)
    bare = await seen(app, ws, "/ws", caplog)
    guard = Guard()
    guarded = await seen(WSGuardMiddleware(app, guard=guard), ws, "/ws", caplog)
    # Whatever the server does with the value (an HTTP 403, a close, its own
    # error), the client sees the same with ws_guard in front; ws_guard adds
    # no crash of its own.
    assert guarded[0] == bare[0]
    assert guarded[1] <= bare[1]
