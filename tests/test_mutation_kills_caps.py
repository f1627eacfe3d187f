"""``MaxConnectionsPerKey`` on a real redis-server, in process, with exact counts.

The slots live in a sorted set per key (``ws:slots:<rule id>:<key>``) scored
by expiry in Redis milliseconds; these tests read that set with raw Redis
commands after each step: the slots taken, given back, refreshed by the
heartbeat and written back after an outage. Each test pins a behaviour
that a small change to ``_caps.py`` could break without any e2e test
telling which line did it. Connections are in process
(``ScriptedWebSocket``); only Redis is a real server.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from apps import echo
from rate_helpers import HeaderSubject, user
from redis_server import RedisServer, redis_server
from ws_guard import Guard, WSGuardMiddleware, rules
from ws_guard._keys import user_key
from ws_guard._shared import redis_key
from ws_guard.testing import ScriptedWebSocket

pytestmark = pytest.mark.redis

ALICE = user_key(None, "alice")


@pytest.fixture(scope="module")
def shared_redis() -> Iterator[RedisServer]:
    with redis_server() as server:
        yield server


@pytest.fixture
def redis(shared_redis: RedisServer) -> RedisServer:
    shared_redis.command("FLUSHALL")
    return shared_redis


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis of the test's own, which the test kills and restarts."""
    with redis_server() as server:
        yield server


def capped(
    redis: RedisServer, limit: int = 2, *, enforce: bool = True, **options: Any
) -> tuple[Any, Guard, rules.MaxConnectionsPerKey]:
    cap = rules.MaxConnectionsPerKey(limit, key=rules.by_user, heartbeat=60.0, enforce=enforce)
    guard = Guard(rules=[HeaderSubject(), cap], storage=redis.url, **options)
    return WSGuardMiddleware(echo, guard=guard), guard, cap


def slots_key(guard: Guard, cap: rules.MaxConnectionsPerKey, name: str) -> str:
    return redis_key(guard.namespace, "slots", cap.id, user_key(None, name))


def integer(reply: bytes) -> int:
    return int(reply.strip().lstrip(b":"))


def members(redis: RedisServer, key: str) -> set[str]:
    """The members of a sorted set, from a raw RESP array reply."""
    lines = redis.command("ZRANGE", key, "0", "-1").split(b"\r\n")
    return {line.decode() for line in lines[2::2] if line}


def redis_ms(redis: RedisServer) -> int:
    lines = redis.command("TIME").split(b"\r\n")
    return int(lines[2]) * 1000 + int(lines[4]) // 1000


async def opened(app: Any, name: str) -> ScriptedWebSocket:
    ws = ScriptedWebSocket(app, headers=user(name))
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.send_text("hi")
    await ws.expect("websocket.send", text="hi")
    return ws


async def refused(app: Any, name: str, code: int, reason: str) -> None:
    ws = ScriptedWebSocket(app, headers=user(name))
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.expect("websocket.close", code=code, reason=reason)
    await ws.finished()


async def leave(*clients: ScriptedWebSocket) -> None:
    for ws in clients:
        await ws.disconnect()
        await ws.finished()


async def test_slots_are_taken_refused_at_the_limit_and_given_back(redis: RedisServer) -> None:
    app, guard, cap = capped(redis)
    a = await opened(app, "alice")
    b = await opened(app, "alice")
    key = slots_key(guard, cap, "alice")
    assert members(redis, key) == {a.scope["ws_guard"].id, b.scope["ws_guard"].id}
    assert cap.count(ALICE) == 2
    await refused(app, "alice", 1008, "too_many_connections")
    assert integer(redis.command("ZCARD", key)) == 2  # a refused handshake holds no slot
    c = await opened(app, "bob")  # bob's slots are his own
    await leave(a)
    assert members(redis, key) == {b.scope["ws_guard"].id}
    assert cap.count(ALICE) == 1
    d = await opened(app, "alice")  # the freed slot is taken again
    await leave(b, c, d)
    assert integer(redis.command("EXISTS", key)) == 0
    assert cap.count(ALICE) == 0
    snap = guard.metrics.snapshot()
    assert snap.closes_by_rule == {"too_many_connections": 1}
    assert snap.closes_by_code == {1008: 1, 1000: 4}
    assert snap.storage_errors == 0
    await guard.shutdown()


async def test_a_slot_expires_three_heartbeats_after_it_is_taken(redis: RedisServer) -> None:
    app, guard, cap = capped(redis)
    before = redis_ms(redis)
    a = await opened(app, "alice")
    after = redis_ms(redis)
    key = slots_key(guard, cap, "alice")
    score = int(float(redis.command("ZSCORE", key, a.scope["ws_guard"].id).split(b"\r\n")[1]))
    assert before + 180_000 <= score <= after + 180_000
    assert 179_000 < integer(redis.command("PTTL", key)) <= 180_000
    await leave(a)
    await guard.shutdown()


async def test_shadow_cap_on_redis_admits_counts_and_reports_each_extra(
    redis: RedisServer,
) -> None:
    app, guard, cap = capped(redis, 1, enforce=False)
    a = await opened(app, "alice")
    b = await opened(app, "alice")
    c = await opened(app, "alice")
    key = slots_key(guard, cap, "alice")
    assert integer(redis.command("ZCARD", key)) == 3
    assert cap.count(ALICE) == 3
    snap = guard.metrics.snapshot()
    assert snap.shadow_breaches_by_rule == {"too_many_connections": 2}
    await leave(a, b, c)
    assert integer(redis.command("EXISTS", key)) == 0
    assert guard.metrics.snapshot().closes_by_code == {1000: 3}
    await guard.shutdown()


async def test_the_heartbeat_pushes_expiry_and_drops_slots_already_expired(
    redis: RedisServer,
) -> None:
    app, guard, cap = capped(redis)
    a = await opened(app, "alice")
    b = await opened(app, "bob")
    alice, bob = slots_key(guard, cap, "alice"), slots_key(guard, cap, "bob")
    own = a.scope["ws_guard"].id
    # A slot about to expire, and one of a dead process that expired already.
    redis.command("ZADD", alice, "1", own)
    redis.command("ZADD", alice, "2", "dead-process-slot")
    redis.command("PEXPIRE", alice, "5000")
    before = redis_ms(redis)
    await cap._beat()
    after = redis_ms(redis)
    assert members(redis, alice) == {own}
    score = int(float(redis.command("ZSCORE", alice, own).split(b"\r\n")[1]))
    assert before + 180_000 <= score <= after + 180_000
    assert 179_000 < integer(redis.command("PTTL", alice)) <= 180_000
    assert members(redis, bob) == {b.scope["ws_guard"].id}
    await leave(a, b)
    await guard.shutdown()


async def test_shutdown_gives_back_slots_still_held(redis: RedisServer) -> None:
    app, guard, cap = capped(redis)
    a = await opened(app, "alice")
    key = slots_key(guard, cap, "alice")
    # The rule shuts down while a slot is still held (the guard's drain
    # would have closed the connection first): the slot goes at once.
    await cap.shutdown(guard)
    assert integer(redis.command("EXISTS", key)) == 0
    assert cap.count(ALICE) == 0
    await leave(a)  # the release after shutdown finds nothing to give back
    assert integer(redis.command("EXISTS", key)) == 0
    assert guard.metrics.snapshot().storage_errors == 0
    await guard.shutdown()


async def test_while_redis_is_down_the_cap_holds_per_process_then_writes_back(
    own_redis: RedisServer,
) -> None:
    app, guard, cap = capped(own_redis, 2)
    a = await opened(app, "alice")
    key = slots_key(guard, cap, "alice")
    own_redis.kill()
    b = await opened(app, "alice")  # one slot held here, room for one more
    await refused(app, "alice", 1008, "too_many_connections")
    assert cap.count(ALICE) == 2
    assert guard.metrics.snapshot().storage_errors == 2
    own_redis.start()  # empty, as after a crash
    c = await opened(app, "bob")  # bob had nothing pending: only his own slot is written
    assert members(own_redis, slots_key(guard, cap, "bob")) == {c.scope["ws_guard"].id}
    # alice's next handshake writes back both slots held here before counting.
    await refused(app, "alice", 1008, "too_many_connections")
    assert members(own_redis, key) == {a.scope["ws_guard"].id, b.scope["ws_guard"].id}
    await leave(b)
    d = await opened(app, "alice")
    assert members(own_redis, key) == {a.scope["ws_guard"].id, d.scope["ws_guard"].id}
    await leave(a, c, d)
    assert integer(own_redis.command("EXISTS", key)) == 0
    snap = guard.metrics.snapshot()
    assert snap.closes_by_rule == {"too_many_connections": 2}
    assert snap.storage_errors == 2
    await guard.shutdown()


async def test_while_redis_is_down_deny_refuses_with_1013(own_redis: RedisServer) -> None:
    app, guard, cap = capped(own_redis, 2, on_storage_error="deny")
    own_redis.kill()
    await refused(app, "alice", 1013, "storage_unavailable")
    assert cap.count(ALICE) == 0
    snap = guard.metrics.snapshot()
    assert snap.closes_by_code == {1013: 1}
    assert snap.storage_errors == 1
    await guard.shutdown()
