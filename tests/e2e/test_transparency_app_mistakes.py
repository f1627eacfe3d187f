"""An app's own mistakes, bare versus guarded, on real servers.

Behind a guard with no rules a client must see what the bare server gives
it, except where ws_guard documents an improvement (docs/servers.md): an
app's mistake ends in a close the client can read, never a dropped TCP
connection, and the metrics count the code that went out.

- The app raises Starlette's ``WebSocketDisconnect`` itself while the client
  is connected (a handler refusing a bad token): bare uvicorn drops TCP
  (1006); guarded, the client gets 1011 ``internal_error``, counted as the
  app's.
- The app closes with a code no close frame may carry (RFC 6455 section
  7.4): websockets-sansio raises and drops TCP, wsproto sends 1000 for
  1005/1006; guarded, 1005 goes out as 1000 and the rest as 1011.
- The app accepts before its first ``receive()``: that receive still returns
  ``websocket.connect``, as on the bare server.
- The app's return value reaches the server for every scope type (uvicorn
  logs a non-``None`` one).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import connect

from tests.support.clients import outcome
from tests.support.helpers import eventually
from tests.support.jwt_keys import SECRET, mint
from tests.support.servers import UVICORN_WS, serve
from ws_guard import Guard, WSGuardMiddleware, rules
from ws_guard.types import Receive, Scope, Send

pytestmark = pytest.mark.e2e

SERVERS = (*UVICORN_WS, "hypercorn")


async def guarded_outcome(app: Any, server: str, path: str = "/ws") -> tuple[Any, Guard]:
    """The client's outcome behind a fresh guard, once the guard counted the close."""
    guard = Guard()
    with serve(WSGuardMiddleware(app, guard=guard), server) as running:
        result = await outcome(running.url + path)
        await eventually(
            lambda: (
                sum(guard.metrics.closes_by_code.values()) == 1
                and guard.metrics.active_connections == 0
            ),
            what="the close counted",
        )
    return result, guard


# -- the app raises WebSocketDisconnect itself --------------------------------


def token_app(code: int) -> Starlette:
    async def endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        if websocket.query_params.get("token") != "good":
            raise WebSocketDisconnect(code=code)  # as real handlers do on a bad token
        await websocket.close()

    return Starlette(routes=[WebSocketRoute("/ws", endpoint)])


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize("code", [1008, 1000])
async def test_an_app_raising_websocket_disconnect_itself_gets_1011(server: str, code: int) -> None:
    app = token_app(code)
    with serve(app, server) as running:
        bare = await outcome(running.url + "/ws")
    # uvicorn drops TCP (no close frame: None); hypercorn sends 1011 itself.
    assert bare == ("closed", (), (1011, "") if server == "hypercorn" else None)
    guarded, guard = await guarded_outcome(app, server)
    assert guarded == ("closed", (), (1011, "internal_error"))
    snap = guard.metrics.snapshot()
    assert dict(snap.closes_by_code) == {1011: 1}
    assert dict(snap.closes_by_initiator) == {"app": 1}
    assert dict(snap.closes_by_rule) == {"internal_error": 1}


# -- the app closes with a code no frame may carry ----------------------------


def closing_app(code: int, *, accept: bool = True, reason: str = "bye") -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            return
        await receive()
        if accept:
            await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": code, "reason": reason})

    return app


UNSENDABLE = [
    (1005, 1000),  # "no status code": a normal close
    (1006, 1011),
    (1004, 1011),
    (1015, 1011),
    (1016, 1011),
    (2000, 1011),
    (999, 1011),
    (5000, 1011),
]


@pytest.mark.parametrize("server", SERVERS)
@pytest.mark.parametrize(("code", "sent"), UNSENDABLE, ids=[str(c) for c, _ in UNSENDABLE])
async def test_an_unsendable_app_close_code_goes_out_valid_and_counted_as_sent(
    server: str, code: int, sent: int, caplog: pytest.LogCaptureFixture
) -> None:
    guarded, guard = await guarded_outcome(closing_app(code), server)
    assert guarded == ("closed", (), (sent, "bye"))
    snap = guard.metrics.snapshot()
    assert dict(snap.closes_by_code) == {sent: 1}
    assert dict(snap.closes_by_initiator) == {"app": 1}
    warnings = [r for r in caplog.records if "the app closed with code" in r.getMessage()]
    assert [r.levelno for r in warnings] == [logging.WARNING]
    assert f"code {code}," in warnings[0].getMessage()


@pytest.mark.parametrize("server", UVICORN_WS)
async def test_bare_servers_mangle_unsendable_close_codes(server: str) -> None:
    """Why ws_guard replaces them: what the bare server does with 1005 and 2000."""
    for code in (1005, 2000):
        with serve(closing_app(code), server) as running:
            bare = await outcome(running.url + "/ws")
        # Never the app's code: TCP dropped (None), or wsproto's own choice.
        assert bare[2] is None or bare[2][0] != code


async def test_the_unsendable_code_warning_is_logged_once_per_code_per_guard(
    caplog: pytest.LogCaptureFixture,
) -> None:
    codes = iter([1005, 2000, 1005, 2000, 2000])

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            return
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": next(codes)})

    guard = Guard()
    with serve(WSGuardMiddleware(app, guard=guard)) as running:
        seen = [(await outcome(running.url + "/ws"))[2] for _ in range(5)]
        await eventually(lambda: guard.metrics.active_connections == 0, what="all finished")
    assert seen == [(1000, ""), (1011, ""), (1000, ""), (1011, ""), (1011, "")]
    assert dict(guard.metrics.snapshot().closes_by_code) == {1000: 2, 1011: 3}
    warned = [
        r.getMessage() for r in caplog.records if "the app closed with code" in r.getMessage()
    ]
    assert len(warned) == 2
    assert "code 1005," in warned[0]
    assert "code 2000," in warned[1]


@pytest.mark.parametrize("server", UVICORN_WS)
@pytest.mark.parametrize("code", [1005, 1008, 4000])
async def test_a_close_before_accept_passes_untouched_and_counts_the_403(
    server: str, code: int, caplog: pytest.LogCaptureFixture
) -> None:
    app = closing_app(code, accept=False)
    with serve(app, server) as running:
        bare = await outcome(running.url + "/ws")
    guarded, guard = await guarded_outcome(app, server)
    assert bare == guarded == ("http", 403)
    snap = guard.metrics.snapshot()
    assert dict(snap.closes_by_code) == {403: 1}
    assert dict(snap.closes_by_initiator) == {"app": 1}
    assert not [r for r in caplog.records if "the app closed with code" in r.getMessage()]


# -- websocket.connect after an eager accept ----------------------------------


def eager_app() -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            return
        await send({"type": "websocket.accept"})  # before its first receive()
        first = await receive()
        second = await receive()
        await send({"type": "websocket.send", "text": f"{first['type']} {second['type']}"})
        await send({"type": "websocket.close", "code": 1000})

    return app


@pytest.mark.parametrize("server", SERVERS)
async def test_the_first_receive_after_an_eager_accept_is_websocket_connect(server: str) -> None:
    app = eager_app()
    with serve(app, server) as running:
        bare = await outcome(running.url + "/ws", "hello")
    guard = Guard()
    with serve(WSGuardMiddleware(app, guard=guard), server) as running:
        guarded = await outcome(running.url + "/ws", "hello")
    assert bare == ("closed", ("websocket.connect websocket.receive",), (1000, ""))
    assert guarded == bare


def eager_app_reading_after_the_token(opened: list[str]) -> Any:
    """Accept at once, read nothing until the first-message token is verified."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            return
        await send({"type": "websocket.accept"})
        info = scope["ws_guard"]
        while info.state != "open":  # bounded by the client's timeout below
            await asyncio.sleep(0.005)
        opened.append(info.state)
        first = await receive()
        second = await receive()
        await send({"type": "websocket.send", "text": f"{first['type']} {second.get('text')}"})
        await send({"type": "websocket.close", "code": 1000})

    return app


@pytest.mark.parametrize("server", SERVERS)
async def test_websocket_connect_survives_a_first_message_token_verified_before_the_first_receive(
    server: str,
) -> None:
    auth = rules.JWTAuth(SECRET, algorithms=["HS256"], token=rules.from_first_message(5.0))
    opened: list[str] = []
    app = WSGuardMiddleware(eager_app_reading_after_the_token(opened), guard=Guard(rules=[auth]))
    with serve(app, server) as running:
        async with connect(running.url + "/ws", open_timeout=5, close_timeout=5) as ws:
            await ws.send(mint("alice"))
            await ws.send("hi")
            reply = await asyncio.wait_for(ws.recv(), 5)
    assert opened == ["open"]  # the connection was open before the app's first receive
    assert reply == "websocket.connect hi"


# -- the app's return value -----------------------------------------------------


def returning_app() -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> Any:
        if scope["type"] == "websocket":
            await receive()
            await send({"type": "websocket.accept"})
            await send({"type": "websocket.close", "code": 1000})
        elif scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
        return "oops"  # invalid ASGI: the server must get to see it

    return app


def _returned_logs(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "should return None" in r.getMessage()]


@pytest.mark.parametrize("server", UVICORN_WS)
async def test_the_app_return_value_reaches_the_server_for_every_scope(
    server: str, caplog: pytest.LogCaptureFixture
) -> None:
    import httpx

    seen = []
    for app in (returning_app(), WSGuardMiddleware(returning_app(), guard=Guard())):
        caplog.clear()
        with (
            caplog.at_level(logging.ERROR),
            serve(app, server, lifespan="off", log_config=None) as running,
        ):
            ws = await outcome(running.url + "/ws")
            async with httpx.AsyncClient() as client:
                http = (await client.get(running.http_url + "/")).status_code
            await eventually(lambda: len(_returned_logs(caplog)) >= 2, what="both logged")
        seen.append((ws, http, _returned_logs(caplog)))
    bare, guarded = seen
    assert bare[:2] == (("closed", (), (1000, "")), 200)
    assert len(bare[2]) == 2
    assert guarded == bare
