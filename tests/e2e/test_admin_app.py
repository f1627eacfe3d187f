"""``admin_app`` on real uvicorn, talked to over real HTTP (httpx) and WebSocket clients.

Two set-ups from docs/control.md: mounted under a path of the guarded app,
and served on a second, internal port by a second uvicorn server in the same
event loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import connect

from tests.support.apps import echo
from tests.support.servers import free_port, serve
from tests.support.ws_closes import server_close
from ws_guard import Guard, WSGuardMiddleware, admin_app

pytestmark = [pytest.mark.e2e]

TOKEN = "0123456789abcdefghijklmnopqrstuvwxyz-_"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def echo_endpoint(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            await websocket.send_text(await websocket.receive_text())
    except WebSocketDisconnect:
        pass


async def test_mounted_admin_refuses_bad_credentials_and_disconnects_with_the_token() -> None:
    guard = Guard(paths=["/ws"])
    app = Starlette(
        routes=[
            WebSocketRoute("/ws", echo_endpoint),
            Mount("/admin", admin_app(guard, token=TOKEN)),
        ],
        middleware=[Middleware(WSGuardMiddleware, guard=guard)],
    )
    with serve(app) as server:
        base = server.http_url + "/admin"
        async with httpx.AsyncClient(timeout=5) as http, connect(server.url + "/ws") as ws:
            await ws.send("ping")
            assert await ws.recv() == "ping"
            refused = [
                await http.get(f"{base}/connections"),
                await http.get(f"{base}/connections", headers={"Authorization": "Bearer nope"}),
                await http.get(f"{base}/connections?token={TOKEN}"),
                await http.get(f"{base}/connections?token={TOKEN}", headers=AUTH),
            ]
            assert [r.status_code for r in refused] == [401, 401, 400, 400]
            listed = (await http.get(f"{base}/connections", headers=AUTH)).json()["connections"]
            assert [(c["client_ip"], c["path"], c["state"]) for c in listed] == [
                ("127.0.0.1", "/ws", "open")
            ]
            response = await http.post(
                f"{base}/disconnect",
                headers=AUTH,
                json={"connection_id": listed[0]["id"], "code": 4001, "reason": "admin"},
            )
            assert (response.status_code, response.json()) == (200, {"closed": 1})
            assert await server_close(ws) == (4001, "admin")
    assert guard.metrics.snapshot().closes_by_rule == {"disconnect": 1}


@pytest.fixture
def two_ports() -> Iterator[tuple[Guard, int, int]]:
    """The guarded app on one port, the admin app on another, one process and one loop."""
    guard = Guard()
    public, internal = free_port(), free_port()
    servers = [
        uvicorn.Server(
            uvicorn.Config(WSGuardMiddleware(echo, guard=guard), port=public, log_level="warning")
        ),
        uvicorn.Server(
            uvicorn.Config(
                admin_app(guard, token=TOKEN),
                host="127.0.0.1",
                port=internal,
                lifespan="off",
                log_level="warning",
            )
        ),
    ]

    async def main() -> None:
        await asyncio.gather(*(s.serve() for s in servers))

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not all(s.started for s in servers):
        assert thread.is_alive(), "servers did not start"
        assert time.monotonic() < deadline, "servers did not start in 10 s"
        time.sleep(0.01)
    try:
        yield guard, public, internal
    finally:
        for s in servers:
            s.should_exit = True
        thread.join(10)


async def test_admin_on_an_internal_port_in_the_same_loop(
    two_ports: tuple[Guard, int, int],
) -> None:
    guard, public, internal = two_ports
    async with (
        httpx.AsyncClient(timeout=5) as http,
        connect(f"ws://127.0.0.1:{public}/ws") as ws,
    ):
        await ws.send("ping")
        assert await ws.recv() == "ping"
        response = await http.post(
            f"http://127.0.0.1:{internal}/disconnect", headers=AUTH, json={"key": "127.0.0.1"}
        )
        assert (response.status_code, response.json()) == (200, {"closed": 1})
        assert await server_close(ws) == (1008, "disconnected")
    assert guard.metrics.snapshot().disconnects == 1
