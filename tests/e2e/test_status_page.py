"""The live status page renders and updates in a real headless Chromium.

A small Starlette app on real uvicorn serves ``examples/static/status.html``
at ``/status`` and ``ws_guard.status_app(guard)`` at ``/status.json``;
real ``websockets`` clients open and break connections while the test reads
the page's DOM over the DevTools protocol.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest
import websockets
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from tests.support.chromium import open_page
from tests.support.close_mix import ManualGauge
from tests.support.servers import serve
from tests.support.services import require_binary
from ws_guard import Guard, WSGuardMiddleware, load, rules, status_app
from ws_guard.types import ASGIApp

STATUS_HTML = Path(__file__).resolve().parents[2] / "examples" / "static" / "status.html"


def status_site(guard: Guard) -> ASGIApp:
    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        async for text in websocket.iter_text():
            await websocket.send_text(text)

    async def page(request: Request) -> FileResponse:
        return FileResponse(STATUS_HTML, headers={"cache-control": "no-store"})

    return Starlette(
        routes=[
            WebSocketRoute("/ws", echo),
            Route("/status", page),
            Route("/status.json", status_app(guard)),
        ],
        middleware=[Middleware(WSGuardMiddleware, guard=guard)],
    )


def make_guard() -> tuple[Guard, ManualGauge]:
    lag = ManualGauge(0.25, name="event_loop_lag", enforce=False)
    guard = Guard(
        rules=[rules.MaxMessageSize(8)],
        load=[load.ConnectionCount(limit=10), lag],
        paths=["/ws"],
    )
    return guard, lag


def text(element_id: str) -> str:
    return f"document.getElementById({element_id!r}).textContent"


@pytest.mark.e2e
def test_status_json_endpoint() -> None:
    guard, _ = make_guard()
    with serve(status_site(guard)) as server:
        response = httpx.get(server.http_url + "/status.json")
        refused = httpx.post(server.http_url + "/status.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    data = json.loads(response.text)
    assert data["active_connections"] == 0
    assert [g["name"] for g in data["gauges"]] == ["connections", "event_loop_lag"]
    assert refused.status_code == 405


@pytest.mark.browser
@pytest.mark.e2e
async def test_status_page_renders_and_updates_in_chromium(tmp_path: Path) -> None:
    require_binary("chromium")
    guard, lag = make_guard()
    with serve(status_site(guard)) as server:
        async with open_page(server.http_url + "/status") as page:
            await page.wait_for(f"{text('state')} === 'live'")
            assert await page.evaluate(text("active")) == "0"
            assert await page.evaluate(text("lag")) == "0.0 ms"
            assert "none yet" in await page.evaluate(text("closes-by-code"))

            clients = [await websockets.connect(server.url + "/ws") for _ in range(3)]
            try:
                await page.wait_for(f"{text('active')} === '3'")
                await page.wait_for(f"{text('peak')} === '3'")

                await clients[0].send("far too long")  # closed with 1009 by the guard
                with pytest.raises(websockets.ConnectionClosedError):
                    await clients[0].recv()
                row = "document.querySelector('#closes-by-code tr[data-code=\"1009\"]')"
                await page.wait_for(f"{row} && {row}.dataset.count === '1'")
                await page.wait_for(f"{text('active')} === '2'")
                assert "message too big" in await page.evaluate(f"{row}.textContent")
                rule_row = (
                    "document.querySelector('#closes-by-rule tr[data-rule=\"message_too_big\"]')"
                )
                assert await page.evaluate(f"{rule_row}.cells[1].textContent") == "1"

                lag.current = 0.3  # past the limit: the lag tile turns red
                await page.wait_for(f"{text('lag')} === '300 ms'")
                await page.wait_for(
                    "document.getElementById('lag-tile').classList.contains('tripped')"
                )
                lag.current = 0.0
                await page.wait_for(f"{text('lag')} === '0.0 ms'")

                renders = int(await page.evaluate("document.body.dataset.renders"))
                await page.wait_for(f"Number(document.body.dataset.renders) >= {renders + 2}", 6)
            finally:
                for ws in clients:
                    await ws.close()
            await page.wait_for(f"{text('active')} === '0'")
            row = "document.querySelector('#closes-by-code tr[data-code=\"1000\"]')"
            await page.wait_for(f"{row} && {row}.dataset.count === '2'")

            shot = Path(os.environ.get("WS_GUARD_SCREENSHOT", tmp_path / "status.png"))
            await page.screenshot(shot)
            assert shot.read_bytes().startswith(b"\x89PNG")
