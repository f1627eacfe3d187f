"""``ByteRate`` with a shared key on the real ``redis-server`` fixture: two guards, one limit.

Each guard has its own Redis client and lease state, as two processes
would; the guards' clock is injected and every lease request is awaited
(``settle``), never slept on.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.support.apps import echo
from tests.support.rate_helpers import Clock
from tests.support.redis_server import RedisServer
from ws_guard import Guard, WSGuardMiddleware, rules
from ws_guard.rules.limits.keying import redis_key
from ws_guard.testing import ScriptedWebSocket

pytestmark = pytest.mark.redis

LIMIT = 20


async def settle(rule: rules.ByteRate) -> None:
    """Wait for the rule's lease requests, including those a reply starts."""
    book = rule._book
    assert book is not None
    while book.tasks:
        await asyncio.gather(*book.tasks)


async def opened(app: Any) -> ScriptedWebSocket:
    ws = ScriptedWebSocket(app, client=("10.0.0.1", 40000))
    await ws.connect()
    await ws.expect("websocket.accept")
    return ws


async def test_two_guards_share_one_key_in_bytes(redis: RedisServer) -> None:
    clock = Clock(0.0)
    byte_rules = [rules.ByteRate(f"{LIMIT}/minute", key=rules.by_ip) for _ in range(3)]
    guards = [Guard(rules=[rule], storage=redis.url, clock=clock) for rule in byte_rules]
    apps = [WSGuardMiddleware(echo, guard=guard) for guard in guards]
    try:
        sockets = [await opened(app) for app in apps[:2]]
        admitted = 0
        closed: list[tuple[int, str]] = []
        for i in range(20):  # 3 bytes at a time, alternating between the guards
            ws, rule = sockets[i % 2], byte_rules[i % 2]
            if ws.closed:
                continue
            await ws.send_text(f"{i:03d}")
            message = await ws.next()
            if message["type"] == "websocket.send":
                assert message["text"] == f"{i:03d}"
                admitted += 3
            else:
                closed.append((message["code"], message["reason"]))
            await settle(rule)
        assert closed == [(1008, "rate_limited; retry-after=60")] * 2
        # Redis never grants more than the limit; a message admitted on debt
        # while the exhausting lease is in flight is the documented overshoot.
        assert LIMIT - 3 < admitted <= LIMIT + 3
        key = redis_key(guards[0].namespace, "bytes", byte_rules[0].id, "10.0.0.1", 0)
        assert int(redis.command("GET", key).split(b"\r\n")[1]) >= LIMIT  # counted in bytes
        # A third guard learns at the handshake that the key's window is spent.
        late = await opened(apps[2])
        await late.send_text("x")
        await late.expect("websocket.close", code=1008, reason="rate_limited; retry-after=60")
        for ws in [*sockets, late]:
            await ws.finished()
    finally:
        for guard in guards:
            await guard.shutdown()
