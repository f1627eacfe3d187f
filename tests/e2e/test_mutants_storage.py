"""Storage failures under ``on_storage_error="deny"``, one rule at a time, on a real Redis.

The fault tests put a ``ConnectRate`` first, which refuses a handshake
before any later rule reaches storage; here each storage-backed rule stands
alone, so its own answer to an outage is what the client sees. A real
``redis-server`` is killed (connection refused at once) or paused with
SIGSTOP (every call waits out the 1 s socket timeout); real uvicorn, real
``websockets`` clients. Shadow mode on a Redis-leased window is checked here
too, since its breaches come from the per-process count, not from memory storage.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.support.apps import echo
from tests.support.fault_tools import on_server, until
from tests.support.rate_helpers import HeaderSubject, read_until_closed
from tests.support.redis_server import RedisServer
from tests.support.servers import ServerThread, serve
from ws_guard import Guard, WSGuardMiddleware, rules
from ws_guard.rules.keys import user_key
from ws_guard.rules.limits.keying import redis_key

pytestmark = [pytest.mark.redis, pytest.mark.e2e]


def guarded(redis: RedisServer, *rule_list: rules.Rule, policy: str = "deny") -> tuple[Any, Guard]:
    guard = Guard(rules=list(rule_list), storage=redis.url, on_storage_error=policy)
    return WSGuardMiddleware(echo, guard=guard), guard


def as_user(name: str) -> dict[str, str]:
    return {"x-user": name}


async def opened(url: str, user: str | None = None) -> ClientConnection:
    headers = as_user(user) if user else None
    ws = await connect(url, additional_headers=headers, open_timeout=10)
    await ws.send("hi")
    assert await asyncio.wait_for(ws.recv(), 5) == "hi"
    return ws


async def refused(url: str, user: str | None = None) -> tuple[int, str]:
    headers = as_user(user) if user else None
    async with connect(url, additional_headers=headers, open_timeout=10) as ws:
        received, code, reason = await read_until_closed(ws)
    assert received == []
    return code, reason


async def finished(server: ServerThread, guard: Guard) -> None:
    def clean() -> bool:
        return guard.metrics.snapshot().active_connections == 0 and not guard.live_connections

    await until(lambda: on_server(server, clean), what="every connection finished")


# -- a connection cap alone --------------------------------------------------------------
@pytest.mark.parametrize("fault", ["killed", "paused"])
async def test_cap_alone_with_deny_refuses_1013_storage_unavailable(
    own_redis: RedisServer, fault: str
) -> None:
    cap = rules.MaxConnectionsPerKey(2, key=rules.by_ip, heartbeat=60.0)
    app, guard = guarded(own_redis, cap)
    slots = redis_key(guard.namespace, "slots", cap.id, "127.0.0.1")
    with serve(app) as server:
        url = server.url + "/ws"
        first = await opened(url)
        assert own_redis.command("ZCARD", slots).strip() == b":1"
        if fault == "killed":
            own_redis.kill()
        else:
            assert own_redis.process is not None
            own_redis.process.send_signal(signal.SIGSTOP)
        try:
            # The key holds one slot of two: only storage can refuse this handshake.
            assert await refused(url) == (1013, "storage_unavailable")
            await first.send("still here")  # the open connection never needed storage
            assert await asyncio.wait_for(first.recv(), 5) == "still here"
        finally:
            if fault == "killed":
                own_redis.start()
            else:
                assert own_redis.process is not None
                own_redis.process.send_signal(signal.SIGCONT)
        snap = guard.metrics.snapshot()
        assert snap.closes_by_code == {1013: 1}
        assert snap.closes_by_rule == {"storage_unavailable": 1}
        assert snap.storage_errors >= 1
        assert cap.count("127.0.0.1") == 1  # the refused handshake holds no slot
        await first.close()
        await finished(server, guard)
        assert cap.count("127.0.0.1") == 0


# -- a shared message rate alone -----------------------------------------------------------
async def test_shared_rate_alone_with_deny_refuses_handshakes_and_closes_on_the_next_lease(
    own_redis: RedisServer,
) -> None:
    rate = rules.MessageRate("100/minute", key=rules.by_user, lease=1)
    app, guard = guarded(own_redis, HeaderSubject(), rate)
    counter = redis_key(guard.namespace, "msg", rate.id, user_key(None, "alice"), 0)

    def leases_settled() -> bool:
        book = rate._book
        return book is not None and not book.tasks

    with serve(app) as server:
        url = server.url + "/ws"
        alice = await opened(url, "alice")  # "hi": on debt, then leased 2 (the debt and one)
        await until(lambda: own_redis.command("GET", counter).split() == [b"$1", b"2"])
        await until(lambda: on_server(server, leases_settled), what="no lease in flight")
        own_redis.kill()

        # A new handshake must learn whether its key's window is spent: refused.
        assert await refused(url, "bob") == (1013, "storage_unavailable")
        assert guard.metrics.snapshot().storage_errors == 1
        # alice's connection spends the one message of allowance it holds; the
        # lease that message asks for fails...
        await alice.send("on allowance")
        assert await asyncio.wait_for(alice.recv(), 5) == "on allowance"
        await until(lambda: guard.metrics.snapshot().storage_errors == 2, what="lease failure")
        # ...and the next message, with no allowance and no storage, closes.
        await alice.send("no allowance")
        received, code, reason = await read_until_closed(alice)
        assert (received, code, reason) == ([], 1013, "storage_unavailable")
        # alice comes back at once: her window failed a moment ago, the handshake asks again.
        assert await refused(url, "alice") == (1013, "storage_unavailable")
        snap = guard.metrics.snapshot()
        assert snap.closes_by_code == {1013: 3}
        assert snap.closes_by_rule == {"storage_unavailable": 3}
        assert snap.storage_errors == 3

        own_redis.start()  # empty, on the same port: enforcement and service come back
        async with connect(url, additional_headers=as_user("alice")) as again:
            for i in range(3):
                await again.send(f"back{i}")
                assert await asyncio.wait_for(again.recv(), 5) == f"back{i}"
        await finished(server, guard)


# -- shadow mode on a leased window ---------------------------------------------------------
async def test_shadow_rate_on_redis_reports_the_breach_and_delivers_everything(
    own_redis: RedisServer,
) -> None:
    rate = rules.MessageRate("3/minute", key=rules.by_user, enforce=False)
    app, guard = guarded(own_redis, HeaderSubject(), rate, policy="allow")
    with serve(app) as server:
        url = server.url + "/ws"
        async with connect(url, additional_headers=as_user("alice")) as a:
            for i in range(6):  # 3 within the minute, 3 over it: all delivered
                await a.send(f"a{i}")
                assert await asyncio.wait_for(a.recv(), 5) == f"a{i}"
            async with connect(url, additional_headers=as_user("alice")) as b:
                for i in range(2):
                    await b.send(f"b{i}")
                    assert await asyncio.wait_for(b.recv(), 5) == f"b{i}"
        await finished(server, guard)
    snap = guard.metrics.snapshot()
    # One report per connection per window, not one per message.
    assert snap.shadow_breaches_by_rule == {"rate_limited": 2}
    assert snap.closes_by_code == {1000: 2}
    assert snap.closes_by_rule == {}
