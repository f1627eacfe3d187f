"""MaxConnectionsPerKey while Redis is away: the cap holds per process, then reconciles.

A real redis-server that the test kills and restarts (empty, like a crashed
cache) or pauses with SIGSTOP; real uvicorn and real ``websockets`` clients.
The heartbeat is a minute, so what the tests see after Redis returns is the
handshake's own reconciliation, not a heartbeat's write-back.
"""

from __future__ import annotations

import signal

import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.support.apps import echo
from tests.support.fault_tools import until
from tests.support.rate_helpers import HeaderSubject, read_until_closed
from tests.support.redis_server import RedisServer
from tests.support.servers import serve
from ws_guard import Guard, WSGuardMiddleware, rules
from ws_guard.rules.keys import user_key
from ws_guard.rules.limits.keying import redis_key

pytestmark = [pytest.mark.redis, pytest.mark.e2e]


def capped(redis: RedisServer, *, query: str = "") -> tuple[WSGuardMiddleware, Guard]:
    cap = rules.MaxConnectionsPerKey(2, key=rules.by_user, heartbeat=60.0)
    guard = Guard(rules=[HeaderSubject(), cap], storage=redis.url + query)
    return WSGuardMiddleware(echo, guard=guard), guard


async def opened(url: str, user: str) -> ClientConnection:
    ws = await connect(url, additional_headers={"x-user": user}, open_timeout=10)
    await ws.send("hi")
    assert await ws.recv() == "hi"
    return ws


async def refused(url: str, user: str) -> tuple[int, str]:
    async with connect(url, additional_headers={"x-user": user}, open_timeout=10) as ws:
        received, code, reason = await read_until_closed(ws)
    assert received == []
    return code, reason


async def test_cap_holds_per_process_while_redis_is_down_and_counts_after_restart(
    own_redis: RedisServer,
) -> None:
    guarded, guard = capped(own_redis)
    slots = redis_key(guard.namespace, "slots", "by_user:2", user_key(None, "alice"))
    with serve(guarded) as server:
        url = server.url + "/ws"
        first = await opened(url, "alice")
        assert own_redis.zcard(slots) == 1
        own_redis.kill()
        second = await opened(url, "alice")  # this process holds 1 of 2: admitted
        assert await refused(url, "alice") == (1008, "too_many_connections")
        bob = await opened(url, "bob")  # another key has its own cap
        errors = guard.metrics.snapshot().storage_errors
        assert errors >= 3  # the three handshakes' cap calls

        own_redis.start()  # empty: neither slot is in Redis
        assert own_redis.zcard(slots) == 0
        # The next handshake for alice writes back both slots, then counts them.
        assert await refused(url, "alice") == (1008, "too_many_connections")
        assert own_redis.zcard(slots) == 2
        await second.close()  # the slot taken during the outage is given back
        await until(lambda: own_redis.zcard(slots) == 1, what="the outage slot released")
        third = await opened(url, "alice")
        assert own_redis.zcard(slots) == 2
        for ws in (first, third, bob):
            await ws.close()
    snap = guard.metrics.snapshot()
    assert snap.closes_by_rule == {"too_many_connections": 2}
    assert snap.closes_by_code == {1008: 2, 1000: 4}  # and the four client closes


async def test_cap_holds_per_process_while_redis_is_paused_and_counts_after(
    own_redis: RedisServer,
) -> None:
    guarded, guard = capped(own_redis, query="?socket_timeout=0.25")
    slots = redis_key(guard.namespace, "slots", "by_user:2", user_key(None, "alice"))
    assert own_redis.process is not None
    with serve(guarded) as server:
        url = server.url + "/ws"
        first = await opened(url, "alice")
        own_redis.process.send_signal(signal.SIGSTOP)
        try:
            second = await opened(url, "alice")  # after one socket timeout
            assert await refused(url, "alice") == (1008, "too_many_connections")
        finally:
            own_redis.process.send_signal(signal.SIGCONT)
        # The scripts that timed out ran when Redis resumed; the next handshake
        # writes back what this process holds, removes the refused one's slot,
        # and counts: two.
        assert await refused(url, "alice") == (1008, "too_many_connections")
        await until(lambda: own_redis.zcard(slots) == 2, what="exactly the two open slots")
        await second.close()
        await until(lambda: own_redis.zcard(slots) == 1, what="the paused-time slot released")
        third = await opened(url, "alice")
        for ws in (first, third):
            await ws.close()
    assert guard.metrics.snapshot().closes_by_rule == {"too_many_connections": 2}


async def test_shadow_mode_cap_admits_while_redis_is_down_and_reports(
    own_redis: RedisServer,
) -> None:
    cap = rules.MaxConnectionsPerKey(1, key=rules.by_user, heartbeat=60.0, enforce=False)
    guard = Guard(rules=[HeaderSubject(), cap], storage=own_redis.url)
    with serve(WSGuardMiddleware(echo, guard=guard)) as server:
        url = server.url + "/ws"
        own_redis.kill()
        sockets = [await opened(url, "alice") for _ in range(2)]
        for ws in sockets:
            await ws.close()
    snap = guard.metrics.snapshot()
    assert snap.shadow_breaches_by_rule == {"too_many_connections": 1}
    assert snap.closes_by_rule == {}
