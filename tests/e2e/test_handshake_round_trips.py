"""Two uvicorn servers share a Redis cap; each admitted handshake costs Redis one round trip.

``ConnectRate`` by address, an auth-stage rule that only reads a header (no
storage of its own), then ``MaxConnectionsPerKey`` by user: the two scripts
go out in one pipeline. Round trips are the redis-server's own reads
(``INFO stats``). Each server runs in its own thread and loop with its own
guard, as two processes would; the real ``websockets`` client connects.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable

import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.support.apps import echo
from tests.support.helpers import eventually
from tests.support.rate_helpers import HeaderSubject, read_until_closed
from tests.support.redis_server import RedisServer
from tests.support.servers import serve
from ws_guard import Guard, WSGuardMiddleware, rules
from ws_guard.rules.keys import user_key
from ws_guard.rules.limits.keying import redis_key

pytestmark = [pytest.mark.redis, pytest.mark.e2e]

#: Reads one ``INFO`` costs the server: the command, and its connection's end.
_INFO_READS = 2


def reads(server: RedisServer) -> int:
    found = re.search(rb"total_reads_processed:(\d+)", server.command("INFO", "stats"))
    if found is None:
        raise AssertionError("INFO stats has no total_reads_processed")
    return int(found.group(1))


async def round_trips(server: RedisServer, action: Awaitable[object]) -> int:
    """Reads at the server that awaiting *action* costs, once Redis is idle."""
    last = reads(server)

    def idle() -> bool:
        nonlocal last
        now = reads(server)
        quiet, last = now - last == _INFO_READS, now
        return quiet

    await eventually(idle, what="Redis idle")
    await action
    return reads(server) - last - _INFO_READS


def guarded(redis: RedisServer) -> tuple[object, Guard]:
    cap = rules.MaxConnectionsPerKey(3, key=rules.by_user, heartbeat=300.0)
    guard = Guard(
        rules=[rules.ConnectRate("100/minute"), HeaderSubject(), cap],
        storage=redis.url,
        namespace="shared",
    )
    return WSGuardMiddleware(echo, guard=guard), guard


async def test_two_servers_hold_the_cap_at_one_round_trip_a_handshake(
    redis: RedisServer,
) -> None:
    (one, guard_one), (two, guard_two) = guarded(redis), guarded(redis)
    slots = redis_key("shared", "slots", "by_user:3", user_key(None, "alice"))
    alice = {"x-user": "alice"}
    with serve(one) as a, serve(two) as b:
        for guard in (guard_one, guard_two):
            await eventually(lambda g=guard: g.channel.subscribed, what="subscribed")
        opened: list[ClientConnection] = []

        async def open_on(url: str) -> None:
            opened.append(await connect(url + "/ws", additional_headers=alice))

        # The first handshake loads the scripts into Redis (NOSCRIPT, then
        # SCRIPT LOAD): four round trips, once for every process sharing it.
        assert await round_trips(redis, open_on(a.url)) == 4
        assert await round_trips(redis, open_on(b.url)) == 1
        assert await round_trips(redis, open_on(a.url)) == 1
        for url in (a.url, b.url):
            async with connect(url + "/ws", additional_headers=alice) as ws:
                received, code, reason = await read_until_closed(ws)
            assert (received, code, reason) == ([], 1008, "too_many_connections")
        assert int(redis.command("ZCARD", slots).strip().lstrip(b":")) == 3
        for ws in opened:
            await ws.send("still here")
            assert await asyncio.wait_for(ws.recv(), 5) == "still here"
            await ws.close()
        await eventually(
            lambda: int(redis.command("ZCARD", slots).strip().lstrip(b":")) == 0,
            what="slots given back",
        )
    for guard, admitted in ((guard_one, 2), (guard_two, 1)):
        snap = guard.metrics.snapshot()
        assert snap.closes_by_rule == {"too_many_connections": 1}
        assert snap.handshakes_admitted == admitted
        assert snap.storage_errors == 0
