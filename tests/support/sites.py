"""A router and a site wrapper for end-to-end tests that mount many guarded apps.

One server per implementation can serve a whole test module; each test mounts
its own freshly built guard on its own path, so counters start at zero, and
reads them on the server's loop with a bounded poll, never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

from tests.support.apps import http_ok
from tests.support.servers import ServerThread
from ws_guard import Guard, MetricsSnapshot, WSGuardMiddleware
from ws_guard.types import ASGIApp, Receive, Scope, Send


class Router:
    """Dispatch WebSocket paths to apps mounted while the server runs."""

    def __init__(self) -> None:
        self.routes: dict[str, ASGIApp] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self.routes[scope["path"]](scope, receive, send)
        else:
            await http_ok(scope, receive, send)


class Site:
    """A running server plus ways to mount guarded apps and read their counters."""

    _paths = itertools.count()

    def __init__(self, kind: str, server: ServerThread, router: Router) -> None:
        self.kind = kind
        self.server = server
        self.router = router

    def mount(self, app: ASGIApp, **guard: Any) -> tuple[str, Guard]:
        built = Guard(**guard)
        path = f"/ws/{next(self._paths)}"
        self.router.routes[path] = WSGuardMiddleware(app, guard=built)
        return self.server.url + path, built

    async def snapshot(self, guard: Guard) -> MetricsSnapshot:
        async def read() -> MetricsSnapshot:
            return guard.metrics.snapshot()

        assert self.server.loop is not None
        future = asyncio.run_coroutine_threadsafe(read(), self.server.loop)
        return await asyncio.wrap_future(future)

    async def wait_for(
        self, guard: Guard, done: Callable[[MetricsSnapshot], bool], timeout: float = 5.0
    ) -> MetricsSnapshot:
        deadline = time.monotonic() + timeout
        while True:
            snap = await self.snapshot(guard)
            if done(snap):
                return snap
            if time.monotonic() > deadline:
                raise AssertionError(f"server counters never matched: {snap}")
            await asyncio.sleep(0.01)


async def closed_by_server(ws: ClientConnection, timeout: float = 5.0) -> list[Any]:
    """Read until the server closes; returns what arrived before the close."""
    received: list[Any] = []
    try:
        while True:
            received.append(await asyncio.wait_for(ws.recv(), timeout))
    except websockets.ConnectionClosed:
        return received
