"""What the docs promise, checked on a real server.

- docs/rate-limits.md: ``MessageRate`` counts a message when the app reads it
  (its ``receive()`` returns it), not when it reaches the socket. Eight
  messages sent back to back to ``MessageRate("5/second")`` give 5 echoes and
  a close when the app reads them at once; an app that reads one every 0.3 s
  (the guard's injected clock moves instead of the test sleeping) echoes all
  8, since no window of 1 s ever holds more than 4 reads.
- docs/servers.md: an app's own refusal before accept (FastAPI's ``raise
  WebSocketException(...)``) passes through as the server's HTTP 403 and is
  counted as 403, not as the 1008 that never went out.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import FastAPI, WebSocket, WebSocketException, status
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.support.helpers import eventually
from tests.support.servers import UVICORN_WS, serve
from ws_guard import Guard, WSGuardMiddleware, rules
from ws_guard.testing import ManualClock
from ws_guard.types import Receive, Scope, Send

pytestmark = pytest.mark.e2e


def reading_app(clock: ManualClock, seconds_per_message: float) -> Any:
    """Echo each message; reading one takes *seconds_per_message* on the guard's clock."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            return
        await receive()
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] != "websocket.receive":
                return
            await send({"type": "websocket.send", "text": message["text"]})
            clock.now += seconds_per_message  # the handler's work, on the injected clock

    return app


async def echoes(url: str, count: int) -> tuple[list[str], Any]:
    async with connect(url, open_timeout=5, close_timeout=5) as ws:
        for i in range(count):
            await ws.send(str(i))  # back to back: no wait for the echo
        received: list[str] = []
        try:
            while len(received) < count:
                received.append(str(await ws.recv()))
        except ConnectionClosed as closed:
            rcvd = closed.rcvd
            return received, rcvd and (rcvd.code, rcvd.reason)
        return received, None


@pytest.mark.parametrize("server", UVICORN_WS)
@pytest.mark.parametrize(
    ("seconds_per_message", "expected"),
    [
        (0.0, ([str(i) for i in range(5)], (1008, "rate_limited; retry-after=1"))),
        (0.3, ([str(i) for i in range(8)], None)),
    ],
    ids=["fast-handler", "slow-handler"],
)
async def test_the_message_rate_counts_messages_as_the_app_reads_them(
    server: str, seconds_per_message: float, expected: tuple[list[str], Any]
) -> None:
    clock = ManualClock(100.0)
    guard = Guard(rules=[rules.MessageRate("5/second")], clock=clock)
    app = WSGuardMiddleware(reading_app(clock, seconds_per_message), guard=guard)
    with serve(app, server) as running:
        assert await echoes(running.url + "/ws", 8) == expected


def refusing_app() -> FastAPI:
    app = FastAPI()

    @app.websocket("/ws")
    async def room(websocket: WebSocket) -> None:
        if websocket.query_params.get("token") != "good":
            raise WebSocketException(code=status.WS_1008_POLICY_VIOLATION, reason="no token")
        await websocket.accept()
        await websocket.close()

    return app


@pytest.mark.parametrize("server", [*UVICORN_WS, "hypercorn"])
async def test_an_app_refusal_before_accept_is_an_http_403_and_counted_as_one(
    server: str,
) -> None:
    app = refusing_app()
    results = []
    guard = Guard()
    for served in (app, WSGuardMiddleware(app, guard=guard)):
        with serve(served, server) as running:
            with pytest.raises(InvalidStatus) as refused:
                async with connect(running.url + "/ws", open_timeout=5):
                    pass
            results.append(refused.value.response.status_code)
            if served is not app:
                await eventually(lambda: guard.metrics.active_connections == 0, what="finished")
    assert results == [403, 403]
    snap = guard.metrics.snapshot()
    assert dict(snap.closes_by_code) == {403: 1}
    assert dict(snap.closes_by_initiator) == {"app": 1}
    assert snap.handshakes_rejected == 0  # ws_guard admitted it; the app refused
