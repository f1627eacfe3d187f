"""Rate limits and caps on real uvicorn with the real ``websockets`` client (memory storage)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable

import pytest
import websockets
from websockets.asyncio.client import connect

from tests.support.apps import echo
from tests.support.rate_helpers import read_until_closed
from tests.support.servers import UVICORN_WS, ServerThread, serve
from ws_guard import Guard, MetricsSnapshot, WSGuardMiddleware, rules

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.filterwarnings("ignore:The `websockets` implementation is deprecated"),
    pytest.mark.filterwarnings("ignore:websockets.legacy is deprecated"),
    pytest.mark.filterwarnings("ignore:remove second argument of ws_handler"),
]


async def until(
    server: ServerThread, guard: Guard, done: Callable[[MetricsSnapshot], bool]
) -> MetricsSnapshot:
    deadline = time.monotonic() + 5
    while True:
        snap = guard.metrics.snapshot()
        if done(snap):
            return snap
        if time.monotonic() > deadline:
            raise AssertionError(f"server counters never matched: {snap}")
        await asyncio.sleep(0.01)


async def rejected(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    """Connect, expect the accept-then-close of a rejected handshake; the code and reason."""
    async with connect(url, additional_headers=headers) as ws:
        received, code, reason = await read_until_closed(ws)
    assert received == []
    return code, reason


async def admitted(url: str, headers: dict[str, str] | None = None) -> None:
    async with connect(url, additional_headers=headers) as ws:
        await ws.send("ping")
        assert await asyncio.wait_for(ws.recv(), 5) == "ping"


@pytest.mark.parametrize("kind", UVICORN_WS)
async def test_n_plus_k_messages_give_exactly_n_echoes_then_1008(kind: str) -> None:
    guard = Guard(rules=[rules.MessageRate("10/minute")])
    with serve(WSGuardMiddleware(echo, guard=guard), kind) as server:
        async with connect(server.url + "/ws") as ws:
            for i in range(13):  # sent back to back, before any echo is read
                await ws.send(f"m{i}")
            echoed, code, reason = await read_until_closed(ws)
        assert echoed == [f"m{i}" for i in range(10)]
        assert code == 1008
        assert re.fullmatch(r"rate_limited; retry-after=(59|60)", reason)
        snap = await until(server, guard, lambda s: s.active_connections == 0)
    assert snap.closes_by_rule == {"rate_limited": 1}


async def test_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored() -> None:
    guard = Guard(rules=[rules.ConnectRate("2/minute")], trusted_proxies=["10.0.0.0/8"])
    app = WSGuardMiddleware(echo, guard=guard)
    with serve(app, proxy_headers=False) as server:  # uvicorn itself must not rewrite the peer
        url = server.url + "/ws"
        await admitted(url, {"X-Forwarded-For": "198.51.100.1"})
        await admitted(url, {"X-Forwarded-For": "198.51.100.2"})
        code, reason = await rejected(url, {"X-Forwarded-For": "198.51.100.3"})
    assert (code, reason) == (1008, "connect_rate_limited; retry-after=60")


async def test_forwarded_for_from_a_trusted_proxy_is_honoured() -> None:
    guard = Guard(rules=[rules.ConnectRate("2/minute")], trusted_proxies=["127.0.0.1"])
    app = WSGuardMiddleware(echo, guard=guard)
    with serve(app, proxy_headers=False) as server:
        url = server.url + "/ws"
        client_a = {"X-Forwarded-For": "198.51.100.1"}
        # The client may prepend anything; the right-most untrusted hop counts.
        forged_a = {"X-Forwarded-For": "203.0.113.99, 198.51.100.1"}
        await admitted(url, client_a)
        await admitted(url, forged_a)
        assert await rejected(url, client_a) == (1008, "connect_rate_limited; retry-after=60")
        await admitted(url, {"X-Forwarded-For": "198.51.100.2"})  # another client
        await admitted(url, {"X-Forwarded-For": "2001:db8::1"})
        await admitted(url)  # the proxy's own address
        await admitted(url, {"X-Forwarded-For": "2001:db8::1"})
        code, _ = await rejected(url, {"X-Forwarded-For": "2001:db8::1"})
    assert code == 1008


async def test_connection_slots_come_back_at_server_shutdown() -> None:
    cap = rules.MaxConnectionsPerKey(2)
    guard = Guard(rules=[cap])
    with serve(WSGuardMiddleware(echo, guard=guard)) as server:
        url = server.url + "/ws"
        first = await connect(url)
        second = await connect(url)
        for ws in (first, second):
            await ws.send("hi")
            assert await ws.recv() == "hi"
        assert await rejected(url) == (1008, "too_many_connections")
        assert cap.count("127.0.0.1") == 2
    # serve() stopped uvicorn with both connections open: shutdown closed them.
    assert cap.count("127.0.0.1") == 0
    for ws in (first, second):
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
