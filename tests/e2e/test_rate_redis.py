"""Shared limits on a real redis-server, enforced by two uvicorn servers at once.

Each server runs in its own thread with its own event loop and its own Guard
(and so its own Redis client and lease state): nothing is shared between
them but Redis, as between two processes. The crash test uses a real second
process, since a slot must outlive a process that dies without cleaning up.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
import time
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect

from tests.support.apps import echo
from tests.support.children import running
from tests.support.helpers import eventually
from tests.support.paths import ROOT, SERVER_PATH
from tests.support.rate_helpers import HeaderSubject, read_until_closed
from tests.support.redis_server import RedisServer
from tests.support.servers import free_port, serve
from ws_guard import Guard, WSGuardMiddleware, rules
from ws_guard.rules.keys import user_key
from ws_guard.rules.limits.keying import redis_key
from ws_guard.testing import ManualClock

pytestmark = [pytest.mark.redis, pytest.mark.e2e]


def app(redis: RedisServer, *rule_list: rules.Rule, **options: Any) -> tuple[Any, Guard]:
    guard = Guard(rules=[HeaderSubject(), *rule_list], storage=redis.url, **options)
    return WSGuardMiddleware(echo, guard=guard), guard


def as_user(name: str) -> dict[str, str]:
    return {"x-user": name}


async def chat(ws: ClientConnection, count: int, prefix: str = "m") -> None:
    for i in range(count):
        await ws.send(f"{prefix}{i}")
        assert await asyncio.wait_for(ws.recv(), 5) == f"{prefix}{i}"


async def rejected(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    async with connect(url, additional_headers=headers) as ws:
        received, code, reason = await read_until_closed(ws)
    assert received == []
    return code, reason


# -- limits shared by two servers ------------------------------------------------------------
async def test_message_rate_by_user_holds_across_servers(redis: RedisServer) -> None:
    one, _ = app(redis, rules.MessageRate("10/minute", key=rules.by_user))
    two, _ = app(redis, rules.MessageRate("10/minute", key=rules.by_user))
    with serve(one) as a, serve(two) as b:
        async with connect(a.url + "/ws", additional_headers=as_user("alice")) as ws:
            await chat(ws, 10)
            await ws.send("eleventh")
            received, code, reason = await read_until_closed(ws)
        assert received == []
        assert code == 1008
        assert re.fullmatch(r"rate_limited; retry-after=(59|60)", reason)
        # Server b learns at the handshake that alice's window is spent.
        async with connect(b.url + "/ws", additional_headers=as_user("alice")) as ws:
            await ws.send("hello from b")
            received, code, reason = await read_until_closed(ws)
        assert (received, code) == ([], 1008)
        assert re.fullmatch(r"rate_limited; retry-after=(59|60)", reason)
        async with connect(b.url + "/ws", additional_headers=as_user("bob")) as ws:
            await chat(ws, 10)  # another user has a quota of his own


async def test_message_rate_split_over_two_servers_stays_within_its_bound(
    redis: RedisServer,
) -> None:
    limit = 20  # leases of at most 2 messages (a tenth of the limit)
    rate_one = rules.MessageRate(f"{limit}/minute", key=rules.by_user)
    rate_two = rules.MessageRate(f"{limit}/minute", key=rules.by_user)
    one, _ = app(redis, rate_one)
    two, _ = app(redis, rate_two)

    def leases_in_flight() -> bool:
        return any(rate._book is not None and rate._book.tasks for rate in (rate_one, rate_two))

    with serve(one) as a, serve(two) as b:
        wa = await connect(a.url + "/ws", additional_headers=as_user("carol"))
        wb = await connect(b.url + "/ws", additional_headers=as_user("carol"))
        delivered = 0
        live = [wa, wb]
        for i in range(3 * limit):
            # Messages admitted while a lease request is in flight are admitted on
            # debt; how many arrive in one Redis round trip is timing, which this
            # test keeps out: it sends once no request is in flight, so what it
            # measures is the lease arithmetic. (Debt is bounded by each process'
            # own count of the limit: docs/rate-limits.md.)
            await eventually(lambda: not leases_in_flight(), timeout=5)
            ws = live[i % len(live)]
            await ws.send(f"m{i}")
            echoed, code, reason = await _one_or_close(ws)
            if echoed is None:  # this server closed it: carol is over the limit
                assert code == 1008
                assert reason.startswith("rate_limited; retry-after=")
                live.remove(ws)
                if not live:
                    break
            else:
                delivered += 1
        assert not live
    # Each server may park up to one lease unspent (undershoot) and admit the
    # message that sent its exhausting request (overshoot): here at most 2.
    assert limit - 4 <= delivered <= limit + 2, delivered


async def test_connect_rate_holds_across_servers(redis: RedisServer) -> None:
    one, _ = app(redis, rules.ConnectRate("3/minute"))
    two, _ = app(redis, rules.ConnectRate("3/minute"))
    with serve(one) as a, serve(two) as b:
        for server in (a, b, a):
            async with connect(server.url + "/ws") as ws:
                await chat(ws, 1)
        assert await rejected(b.url + "/ws") == (1008, "connect_rate_limited; retry-after=60")
        code, reason = await rejected(a.url + "/ws")
    assert (code, reason) == (1008, "connect_rate_limited; retry-after=60")


async def test_connect_rate_keeps_one_small_hash_per_key_whatever_the_limit(
    redis: RedisServer,
) -> None:
    rule = rules.ConnectRate("10000/day; 2/minute")
    guarded, guard = app(redis, rule)
    key = redis_key(guard.namespace, "connect", rule.id, "127.0.0.1")
    with serve(guarded) as server:
        url = server.url + "/ws"
        for _ in range(2):
            async with connect(url) as ws:
                await chat(ws, 1)
        assert await rejected(url) == (1008, "connect_rate_limited; retry-after=60")
    assert redis.command("TYPE", key).strip() == b"+hash"
    # The first attempt's time, then window, previous and current count per rate:
    # the refused attempt counted in both (the minute's count stops at its limit).
    fields = redis.command("HMGET", key, "c1", "c2").split(b"\r\n")
    assert (fields[2], fields[4]) == (b"3", b"2")
    assert redis.command("HLEN", key).strip() == b":7"
    # It lives until the end of the window after the current one: two days at most.
    assert 86_400_000 < int(redis.command("PTTL", key).strip().lstrip(b":")) <= 2 * 86_400_000
    assert int(redis.command("MEMORY", "USAGE", key).strip().lstrip(b":")) < 200


async def test_connection_cap_holds_across_servers_and_frees_slots(redis: RedisServer) -> None:
    cap_a = rules.MaxConnectionsPerKey(2, key=rules.by_user)
    one, guard_a = app(redis, cap_a)
    two, guard_b = app(redis, rules.MaxConnectionsPerKey(2, key=rules.by_user))
    assert guard_a.namespace == guard_b.namespace  # built alike: they share counters
    slots = redis_key(guard_a.namespace, "slots", cap_a.id, user_key(None, "alice"))
    with serve(two) as b:
        with serve(one) as a:
            first = await connect(a.url + "/ws", additional_headers=as_user("alice"))
            second = await connect(b.url + "/ws", additional_headers=as_user("alice"))
            await chat(first, 1)
            await chat(second, 1)
            url_a = a.url + "/ws"
            assert await rejected(url_a, as_user("alice")) == (1008, "too_many_connections")
            async with connect(url_a, additional_headers=as_user("bob")) as ws:
                await chat(ws, 1)
            await second.close()  # a client close on b frees a slot for a
            await eventually(lambda: redis.zcard(slots) == 1)
            third = await connect(url_a, additional_headers=as_user("alice"))
            await chat(third, 1)
            assert redis.zcard(slots) == 2
        # Server a shut down with two of alice's connections open: both slots came back.
        assert redis.zcard(slots) == 0
        for ws in (first, third):
            _, code, _ = await read_until_closed(ws)
            assert code in (1001, 1012)
        async with connect(b.url + "/ws", additional_headers=as_user("alice")) as ws:
            await chat(ws, 1)


async def test_slots_of_a_killed_process_expire(redis: RedisServer) -> None:
    heartbeat = 0.5  # slots live 1.5 s without one
    # Built alike in this process: the same derived namespace as the subprocess'
    # guard, so the slots the killed process held count here too.
    survivor, guard = app(redis, rules.MaxConnectionsPerKey(2, key=rules.by_user))
    slots = redis_key(guard.namespace, "slots", "by_user:2", user_key(None, "alice"))
    port = free_port()
    env = dict(
        os.environ,
        PYTHONPATH=SERVER_PATH,
        WS_GUARD_TEST_REDIS=redis.url,
        WS_GUARD_TEST_HEARTBEAT=str(heartbeat),
    )
    command = [sys.executable, "-m", "uvicorn", "tests.support.rate_app:make_app", "--factory"]
    command += ["--port", str(port), "--log-level", "warning"]
    url = f"ws://127.0.0.1:{port}/ws"
    # The survivor serves before the kill, so nothing starts while the slots run out.
    with serve(survivor) as b:
        url_b = b.url + "/ws"
        with running(command, sig=signal.SIGKILL, cwd=ROOT, env=env) as process:
            await eventually(lambda: _listening(port), timeout=15)
            held = [await connect(url, additional_headers=as_user("alice")) for _ in range(2)]
            for ws in held:
                await chat(ws, 1)
            taken = slot_expiries(redis, slots)
            assert len(taken) == 2
            # Past the expiry the handshakes wrote, on Redis' clock: only
            # heartbeats can have kept the live process' slots.
            await eventually(lambda: redis_time_ms(redis) > max(taken), timeout=10)
            beaten = slot_expiries(redis, slots)
            assert len(beaten) == 2
            assert min(beaten) > max(taken)
            assert await rejected(url_b, as_user("alice")) == (1008, "too_many_connections")
            process.send_signal(signal.SIGKILL)  # no release, no shutdown
            process.wait(10)
        # The dead process' slots still count (at least 1 s of their life is left)...
        assert await rejected(url_b, as_user("alice")) == (1008, "too_many_connections")
        # ...until they expire, heartbeat * 3 after the last heartbeat.
        await eventually(lambda: redis.zcard(slots) == 0, timeout=5)
        async with connect(url_b, additional_headers=as_user("alice")) as ws:
            await chat(ws, 1)


def _resp_values(reply: bytes) -> list[bytes]:
    """The bulk strings of a flat RESP array reply, e.g. ZRANGE ... WITHSCORES."""
    return [line for line in reply.split(b"\r\n") if line and line[:1] not in (b"*", b"$")]


def slot_expiries(redis: RedisServer, key: str) -> list[float]:
    """The expiry times (ms, Redis' clock) of the slots in *key*."""
    values = _resp_values(redis.command("ZRANGE", key, "0", "-1", "WITHSCORES"))
    return [float(score) for score in values[1::2]]


def redis_time_ms(redis: RedisServer) -> int:
    seconds, micros = _resp_values(redis.command("TIME"))
    return int(seconds) * 1000 + int(micros) // 1000


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.2).close()
    except OSError:
        return False
    return True


# -- storage failures ------------------------------------------------------------------------
async def test_outage_with_allow_keeps_serving_and_recovers(own_redis: RedisServer) -> None:
    connect_rate = rules.ConnectRate("3/minute")
    cap = rules.MaxConnectionsPerKey(10, key=rules.by_user, heartbeat=0.2)
    message_rate = rules.MessageRate("100/minute", key=rules.by_user)
    guarded, guard = app(own_redis, connect_rate, cap, message_rate)
    slots = redis_key(guard.namespace, "slots", cap.id, user_key(None, "alice"))
    counter = redis_key(guard.namespace, "msg", message_rate.id, user_key(None, "alice"), 0)
    with serve(guarded) as server:
        url = server.url + "/ws"
        first = await connect(url, additional_headers=as_user("alice"))
        await chat(first, 3, "before")
        own_redis.kill()
        await chat(first, 5, "during")  # messages flow without storage
        during = [await connect(url, additional_headers=as_user("alice")) for _ in range(3)]
        for ws in during:  # ConnectRate falls back to counting in this process...
            await chat(ws, 1)
        code, reason = await rejected(url, as_user("alice"))  # ...and enforces there
        assert (code, reason) == (1008, "connect_rate_limited; retry-after=60")
        errors = guard.metrics.snapshot().storage_errors
        assert errors >= 7  # at least each handshake's ConnectRate, and the cap's for three
        assert guard.metrics.snapshot().closes_by_rule == {"connect_rate_limited": 1}

        own_redis.start()  # empty, like a crashed cache
        # The heartbeat writes back the four slots this process holds.
        await eventually(lambda: own_redis.zcard(slots) == 4)
        for _ in range(3):  # ConnectRate counts again from zero...
            async with connect(url, additional_headers=as_user("alice")) as ws:
                await chat(ws, 1)
        code, reason = await rejected(url, as_user("alice"))  # ...and enforces
        assert (code, reason) == (1008, "connect_rate_limited; retry-after=60")

        async def message_counter_is_back() -> bool:
            await chat(first, 1, "after")
            return own_redis.command("EXISTS", counter).strip() == b":1"

        deadline = time.monotonic() + 5
        while not await message_counter_is_back():  # leases resume after the retry pause
            assert time.monotonic() < deadline, "message leases never resumed"
            await asyncio.sleep(0.1)
        for ws in (first, *during):
            await ws.close()


async def test_outage_with_deny_closes_1013_and_recovers(own_redis: RedisServer) -> None:
    # A frozen guard clock: the pause after a failed lease (LeaseBook.retry, 1 s)
    # cannot run out by itself on a slow machine and let a message through.
    clock = ManualClock(1000.0)
    rate = rules.MessageRate("1000/minute", key=rules.by_user, lease=1)
    guarded, guard = app(
        own_redis, rules.ConnectRate("100/minute"), rate, on_storage_error="deny", clock=clock
    )

    def leases_settled() -> bool:  # no lease request in flight on the server
        return rate._book is not None and not rate._book.tasks

    with serve(guarded) as server:
        url = server.url + "/ws"
        first = await connect(url, additional_headers=as_user("alice"))
        # One message at a time, each lease answered before the next message:
        # before0 goes on debt and is paid by a lease of 2, before1 spends that
        # and leases one more in the background, so one message is in hand.
        for i in range(2):
            await chat(first, 1, f"before{i}")
            await eventually(leases_settled)
        own_redis.kill()
        assert await rejected(url, as_user("bob")) == (1013, "storage_unavailable")
        assert guard.metrics.snapshot().storage_errors == 1  # bob's ConnectRate
        await first.send("during0")  # spends the message in hand; its lease fails
        assert await asyncio.wait_for(first.recv(), 5) == "during0"
        await eventually(lambda: guard.metrics.snapshot().storage_errors == 2)
        await eventually(leases_settled)
        await first.send("during1")  # nothing in hand, no lease: the policy denies
        assert await read_until_closed(first) == ([], 1013, "storage_unavailable")
        own_redis.start()
        # The handshake's check reaches Redis again and ends the failure pause.
        async with connect(url, additional_headers=as_user("alice")) as ws:
            await chat(ws, 3, "after")
    snap = guard.metrics.snapshot()
    assert snap.storage_errors == 2
    assert snap.closes_by_code.get(1013) == 2
    assert snap.closes_by_rule.get("storage_unavailable") == 2


async def _one_or_close(ws: ClientConnection) -> tuple[Any, int, str]:
    """The echo of the message just sent, or ``None`` and the close code and reason."""
    try:
        return await asyncio.wait_for(ws.recv(), 5), 0, ""
    except websockets.ConnectionClosed:
        _, code, reason = await read_until_closed(ws)
        return None, code, reason
