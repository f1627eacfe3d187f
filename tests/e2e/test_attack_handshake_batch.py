"""Attacks on the handshake's pipelined Redis checks, on real uvicorn.

A client that sends its upgrade request and leaves while the guard waits
for Redis (its replies held by a real TCP proxy, tests/support/reply_gate.py)
must leave no connection slot behind: with a cap of one, the next client
of the same key is admitted. Real ``redis-server``, real uvicorn on
127.0.0.1, a raw socket for the client that leaves, the real ``websockets``
client for the next one.
"""

from __future__ import annotations

import base64
import os
import socket
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.client import connect

from tests.e2e.test_jwt import report
from tests.support.helpers import eventually
from tests.support.jwt_apps import whoami
from tests.support.redis_server import RedisServer
from tests.support.reply_gate import ReplyGate
from tests.support.servers import serve
from ws_guard import Guard, WSGuardMiddleware, rules
from ws_guard.rules.limits.keying import redis_key

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


@pytest.fixture
async def gate(redis: RedisServer) -> AsyncIterator[ReplyGate]:
    proxy = ReplyGate(redis.port)
    await proxy.start()
    yield proxy
    await proxy.stop()


def upgrade_request(port: int) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


@pytest.mark.parametrize("server", ["websockets-sansio", "hypercorn"])
async def test_a_client_gone_while_its_checks_wait_for_redis_leaves_no_slot(
    redis: RedisServer, gate: ReplyGate, server: str
) -> None:
    cap = rules.MaxConnectionsPerKey(1, key=rules.by_ip, heartbeat=300.0)
    guard = Guard(
        rules=[rules.ConnectRate("100/minute"), cap],
        storage=f"redis://127.0.0.1:{gate.port}/0",
        paths=["/ws"],
    )
    with serve(WSGuardMiddleware(whoami, guard=guard), server=server) as thread:
        async with connect(f"{thread.url}/ws", proxy=None) as ws:  # starts the guard
            assert (await report(ws))["sub"] is None
        slots = redis_key(guard.namespace, "slots", cap.id, "127.0.0.1")
        # Its end fully done (the release's ZREM answered) before replies are held.
        await eventually(
            lambda: guard.metrics.snapshot().active_connections == 0, what="the first one ended"
        )
        assert redis.zcard(slots) == 0
        gate.open.clear()
        sock = socket.create_connection(("127.0.0.1", thread.port))
        try:
            sock.sendall(upgrade_request(thread.port))
            await eventually(lambda: redis.zcard(slots) == 1, what="the slot taken in Redis")
        finally:
            sock.close()  # gone before the guard heard Redis
        gate.open.set()
        await eventually(lambda: redis.zcard(slots) == 0, what="the slot given back")
        async with connect(f"{thread.url}/ws", proxy=None) as ws:
            assert (await report(ws))["sub"] is None
        snap = guard.metrics.snapshot()
        assert snap.closes_by_rule.get("too_many_connections") is None
