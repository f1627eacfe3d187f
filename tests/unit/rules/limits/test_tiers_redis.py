"""Per-tier limits on a real redis-server: each tier counts under keys of its own.

Connections are in process (``ScriptedWebSocket``); only Redis is a real
server. The keys are read back with raw Redis commands, so a tier that
shared another's window would show as one key, not two.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.apps import echo
from tests.support.helpers import eventually
from tests.support.redis_server import RedisServer
from tests.unit.rules.limits.test_tiers import (
    PlanClaims,
    by_plan,
    closed,
    echoed,
    opened,
    refused,
)
from ws_guard import Guard, WSGuardMiddleware, rules
from ws_guard.rules.keys import user_key
from ws_guard.rules.limits.keying import redis_key

U = user_key(None, "u")


def exists(redis: RedisServer, key: str) -> bool:
    return redis.command("EXISTS", key) == b":1\r\n"


def settled(rate: rules.MessageRate) -> bool:
    """No lease request of any tier's window is in flight."""
    windows = [states.peek(U) for maps in rate._tier_maps.values() for states in maps]
    return all(window is None or window.task is None for window in windows)


def integer(reply: bytes) -> int:
    return int(reply.strip().lstrip(b":"))


@pytest.mark.redis
async def test_message_rate_tiers_count_in_their_own_redis_windows(redis: RedisServer) -> None:
    rate = rules.MessageRate(by_plan("4/minute", "2/minute"), key=rules.by_user, lease=1)
    guard = Guard(rules=[PlanClaims(), rate], storage=redis.url)
    app = WSGuardMiddleware(echo, guard=guard)
    try:
        free, pro = await opened(app, "u"), await opened(app, "u", "pro")
        free_key = redis_key(guard.namespace, "msg", rate.id, U, "2/60s", 0)
        pro_key = redis_key(guard.namespace, "msg", rate.id, U, "4/60s", 0)
        for ws, n in ((free, 2), (pro, 4)):
            for _ in range(n):
                await echoed(ws, 1)
                # Each message's lease settles before the next, so the last
                # one is decided on what Redis granted, not on debt.
                await eventually(lambda: settled(rate))
        await closed(free, 1008, "rate_limited; retry-after=60")
        await closed(pro, 1008, "rate_limited; retry-after=60")
        assert exists(redis, free_key)
        assert exists(redis, pro_key)
        assert guard.metrics.snapshot().closes_by_rule == {"rate_limited": 2}
    finally:
        await guard.shutdown()


@pytest.mark.redis
async def test_connect_rate_tiers_count_in_their_own_redis_hashes(redis: RedisServer) -> None:
    rate = rules.ConnectRate(by_plan("3/minute", "1/minute"), key=rules.by_user)
    guard = Guard(rules=[PlanClaims(), rate], storage=redis.url)
    app = WSGuardMiddleware(echo, guard=guard)
    held: list[Any] = []
    try:
        held.append(await opened(app, "u"))
        await refused(app, "u", None, 1008, "connect_rate_limited; retry-after=60")
        held += [await opened(app, "u", "pro") for _ in range(3)]
        await refused(app, "u", "pro", 1008, "connect_rate_limited; retry-after=60")
        for tier in ("1/60s", "3/60s"):
            assert exists(redis, redis_key(guard.namespace, "connect", rate.id, U, tier))
        assert not exists(redis, redis_key(guard.namespace, "connect", rate.id, U))
        assert guard.metrics.snapshot().closes_by_rule == {"connect_rate_limited": 2}
    finally:
        for ws in held:
            await ws.disconnect()
            await ws.finished()
        await guard.shutdown()


@pytest.mark.redis
async def test_connection_cap_tiers_hold_slots_under_their_own_keys(redis: RedisServer) -> None:
    cap = rules.MaxConnectionsPerKey(by_plan(3, 1), key=rules.by_user, heartbeat=60.0)
    guard = Guard(rules=[PlanClaims(), cap], storage=redis.url)
    app = WSGuardMiddleware(echo, guard=guard)
    try:
        free = await opened(app, "u")
        await refused(app, "u", None, 1008, "too_many_connections")
        pro = [await opened(app, "u", "pro") for _ in range(3)]
        await refused(app, "u", "pro", 1008, "too_many_connections")
        free_key = redis_key(guard.namespace, "slots", cap.id, f"{U}#1")
        pro_key = redis_key(guard.namespace, "slots", cap.id, f"{U}#3")
        assert integer(redis.command("ZCARD", free_key)) == 1
        assert integer(redis.command("ZCARD", pro_key)) == 3
        for ws in [free, *pro]:
            await ws.disconnect()
            await ws.finished()
        assert not exists(redis, free_key)
        assert not exists(redis, pro_key)
        assert guard.metrics.snapshot().closes_by_rule == {"too_many_connections": 2}
    finally:
        await guard.shutdown()


@pytest.mark.redis
async def test_byte_rate_tiers_count_their_bytes_in_their_own_redis_windows(
    redis: RedisServer,
) -> None:
    rate = rules.ByteRate(by_plan("40/minute", "10/minute"), key=rules.by_user, lease=5)
    guard = Guard(rules=[PlanClaims(), rate], storage=redis.url)
    app = WSGuardMiddleware(echo, guard=guard)
    try:
        free, pro = await opened(app, "u"), await opened(app, "u", "pro")
        free_key = redis_key(guard.namespace, "bytes", rate.id, U, "10/60s", 0)
        pro_key = redis_key(guard.namespace, "bytes", rate.id, U, "40/60s", 0)
        for ws, n in ((free, 2), (pro, 8)):
            for i in range(n):
                await ws.send_text(f"bytes{i}"[:5])
                await ws.expect("websocket.send", text=f"bytes{i}"[:5])
                await eventually(lambda: settled(rate))  # decided on grants, not debt
        await closed(free, 1008, "rate_limited; retry-after=60")
        await closed(pro, 1008, "rate_limited; retry-after=60")
        # Counted in bytes, each tier under its own key: free's 10 are not in
        # pro's 40. A refused lease request stays counted (at most one lease of 5).
        assert 10 <= integer(redis.command("GET", free_key).split(b"\r\n")[1]) <= 15
        assert 40 <= integer(redis.command("GET", pro_key).split(b"\r\n")[1]) <= 45
        assert guard.metrics.snapshot().closes_by_rule == {"rate_limited": 2}
    finally:
        await guard.shutdown()
