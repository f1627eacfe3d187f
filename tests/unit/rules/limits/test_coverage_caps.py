"""``MaxConnectionsPerKey`` at its edges: no key, Redis away, slots held past the drain.

A key function may return ``None`` (a header the client did not send): such
a connection is not counted. With Redis storage, a slot is taken in Redis and
given back when the connection ends; if the app outlives the drain, the
guard's shutdown gives back every slot it still holds at once (one pipeline)
rather than leaving them to expire after ``3 * heartbeat``, and the late
release of those connections finds nothing to do. A Redis that cannot
answer under ``on_storage_error="deny"`` refuses handshakes with 1013
``storage_unavailable``, never the cap's 1008. In process, real
``redis-server``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pytest

from tests.support.apps import Held
from tests.support.redis_server import RedisServer
from ws_guard import Guard, WSGuardMiddleware, rules
from ws_guard._core.connection import Connection
from ws_guard.rules.limits.keying import redis_key
from ws_guard.testing import ScriptedWebSocket
from ws_guard.types import ASGIApp


def team(conn: Connection) -> str | None:
    """The ``x-team`` header, or None: connections without one are not counted."""
    return conn.header("x-team")


async def handshake(app: ASGIApp, headers: Sequence[tuple[bytes, bytes]] = ()) -> ScriptedWebSocket:
    ws = ScriptedWebSocket(app, headers=headers)
    await ws.connect()
    await ws.expect("websocket.accept")
    return ws


async def test_a_connection_without_a_key_is_not_counted() -> None:
    cap = rules.MaxConnectionsPerKey(1, key=team)
    guard = Guard(rules=[cap])
    app = Held()
    middleware = WSGuardMiddleware(app, guard=guard)
    keyless = [await handshake(middleware) for _ in range(3)]  # limit 1, yet all admitted
    red = await handshake(middleware, [(b"x-team", b"red")])
    second_red = ScriptedWebSocket(middleware, headers=[(b"x-team", b"red")])
    await second_red.connect()
    await second_red.expect("websocket.accept")
    await second_red.expect("websocket.close", code=1008, reason="too_many_connections")
    await second_red.finished()
    assert cap.count("red") == 1
    app.release.set()
    for ws in [*keyless, red]:
        await ws.finished()
    assert cap.count("red") == 0
    snap = guard.metrics.snapshot()
    assert snap.closes_by_rule == {"too_many_connections": 1}
    assert snap.handshakes_admitted == 4


@pytest.mark.redis
@pytest.mark.parametrize("redis_at_shutdown", ["up", "killed"])
async def test_shutdown_gives_back_the_slots_of_connections_that_outlive_the_drain(
    own_redis: RedisServer, redis_at_shutdown: str, caplog: pytest.LogCaptureFixture
) -> None:
    cap = rules.MaxConnectionsPerKey(5, key=rules.by_ip, heartbeat=60.0)
    guard = Guard(rules=[cap], storage=own_redis.url)
    app = Held()
    middleware = WSGuardMiddleware(app, guard=guard)
    clients = [await handshake(middleware) for _ in range(2)]
    slots = redis_key(guard.namespace, "slots", cap.id, "127.0.0.1")
    assert own_redis.command("ZCARD", slots) == b":2\r\n"
    assert cap.count("127.0.0.1") == 2
    await guard.drain(0.0, grace=0.05)  # closes both; the app holds on past the grace
    assert all(ws.closed for ws in clients)
    assert guard.metrics.snapshot().active_connections == 2
    errors_before = guard.metrics.snapshot().storage_errors
    if redis_at_shutdown == "killed":
        own_redis.kill()
    await guard.shutdown()
    assert cap.count("127.0.0.1") == 0  # nothing held by this process any more
    if redis_at_shutdown == "up":
        assert own_redis.command("ZCARD", slots) == b":0\r\n"  # given back now, not at expiry
        assert guard.metrics.snapshot().storage_errors == errors_before
    else:
        assert guard.metrics.snapshot().storage_errors == errors_before + 1
        assert any(
            r.levelno == logging.WARNING and "connection cap release failed" in r.getMessage()
            for r in caplog.records
        )
    app.release.set()  # the app ends at last; its release finds nothing to give back
    for ws in clients:
        await ws.finished()
    assert guard.metrics.snapshot().active_connections == 0
    assert guard.metrics.snapshot().closes_by_code == {1012: 2}


@pytest.mark.redis
async def test_a_cap_that_cannot_reach_redis_refuses_with_1013_under_deny(
    own_redis: RedisServer,
) -> None:
    cap = rules.MaxConnectionsPerKey(2, key=rules.by_ip, heartbeat=60.0)
    guard = Guard(rules=[cap], storage=own_redis.url, on_storage_error="deny")
    app = Held()
    middleware = WSGuardMiddleware(app, guard=guard)
    first = await handshake(middleware)
    own_redis.kill()
    refused = ScriptedWebSocket(middleware)
    await refused.connect()
    await refused.expect("websocket.accept")
    await refused.expect("websocket.close", code=1013, reason="storage_unavailable")
    await refused.finished()
    assert cap.count("127.0.0.1") == 1  # the refused handshake holds no slot
    app.release.set()
    await first.finished()  # its release cannot reach Redis either: counted, not raised
    assert cap.count("127.0.0.1") == 0
    snap = guard.metrics.snapshot()
    assert snap.closes_by_rule == {"storage_unavailable": 1}
    assert snap.storage_errors == 2
    await guard.shutdown()
