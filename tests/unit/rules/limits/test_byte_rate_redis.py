"""``ByteRate`` with a shared key on the real ``redis-server`` fixture: two guards, one limit.

Each guard has its own Redis client and lease state, as two processes
would; the guards' clock is injected and every lease request is awaited
(``settle``), never slept on.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from tests.support.apps import echo
from tests.support.rate_helpers import Clock
from tests.support.redis_server import RedisServer
from ws_guard import Guard, WSGuardMiddleware, rules
from ws_guard.rules.limits.byte_windows import LeasedCostWindow
from ws_guard.rules.limits.keying import redis_key
from ws_guard.rules.limits.leases import STORAGE_DOWN, LeaseBook
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


# -- LeasedCostWindow: leases counted in bytes -------------------------------------------------
KEY = "ws_guard:test:bytes:{rule|alice}:0"


async def started(redis: RedisServer, clock: Clock, **options: object) -> Guard:
    guard = Guard(storage=redis.url, clock=clock, **options)  # type: ignore[arg-type]
    await guard.startup()
    return guard


async def settle_window(window: LeasedCostWindow) -> None:
    while window.task is not None:
        await window.task


def counter(redis: RedisServer) -> int:
    return int(redis.command("GET", KEY).split(b"\r\n")[1])


async def test_a_cost_spends_the_allowance_and_owes_the_rest(redis: RedisServer) -> None:
    clock = Clock(0.0)
    guard = await started(redis, clock)
    book = LeaseBook(guard)
    window = LeasedCostWindow(book, KEY, limit=100, window=10.0, max_lease=16)
    try:
        assert window.take(0.0, 10) is None  # no allowance yet: 10 on debt, asks 10 + 1
        assert (window.debt, window.used) == (10, 10)
        await settle_window(window)
        assert counter(redis) == 11
        assert (window.debt, window.allowance, window.lease) == (0, 1, 2)
        assert window.take(0.0, 5) is None  # 1 from the allowance, 4 owed
        assert (window.debt, window.allowance, window.used) == (4, 0, 15)
        await settle_window(window)
        assert counter(redis) == 11 + 4 + 2
        assert (window.debt, window.allowance) == (0, 2)
        assert window.take(0.0, 2) is None  # fits the allowance exactly: asks for more
        assert window.allowance == 0
        await settle_window(window)
        assert window.allowance == 4
        assert window.take(0.0, 0) is None  # an empty message costs nothing
        assert window.used == 17
    finally:
        await book.close()
        await guard.shutdown()


async def test_redis_grants_the_limit_in_bytes_and_a_process_never_exceeds_it(
    redis: RedisServer,
) -> None:
    clock = Clock(0.0)
    guard = await started(redis, clock)
    book = LeaseBook(guard)
    window = LeasedCostWindow(book, KEY, limit=10, window=10.0, max_lease=100)
    try:
        assert redis.command("SET", KEY, "6", "PX", "10000") == b"+OK\r\n"  # another process
        assert window.take(0.0, 5) is None  # on debt: this process does not know yet
        await settle_window(window)
        assert counter(redis) == 12  # asked 5 + 1; Redis had 4 left: granted 4, spent
        assert window.exhausted
        assert (window.debt, window.allowance, window.used) == (0, 0, 5)
        assert window.take(0.0, 1) == window.end  # the window is spent: refused
        assert window.take(0.0, 6) == window.end  # 5 + 6 would pass 10 in this process alone
        assert window.used == 5
    finally:
        await book.close()
        await guard.shutdown()


@pytest.mark.parametrize(("policy", "answer"), [("allow", None), ("deny", STORAGE_DOWN)])
async def test_a_failed_lease_leaves_the_policy_to_decide(
    own_redis: RedisServer, policy: str, answer: float | None
) -> None:
    clock = Clock(0.0)
    guard = await started(own_redis, clock, on_storage_error=policy)
    book = LeaseBook(guard, retry=1.0)
    window = LeasedCostWindow(book, KEY, limit=100, window=10.0, max_lease=10)
    try:
        own_redis.kill()
        assert window.take(0.0, 7) is None  # on debt: the failure is not known yet
        await settle_window(window)
        assert window.failed_until == 1.0
        assert window.take(0.5, 3) == answer  # within the pause: the policy decides
        assert window.used == (10 if policy == "allow" else 7)
    finally:
        await book.close()
        await guard.shutdown()


# -- the rule on Redis: the handshake's check and the warning -----------------------------------
@pytest.mark.parametrize("policy", ["allow", "deny"])
async def test_a_handshake_while_redis_is_down_follows_the_policy(
    own_redis: RedisServer, policy: str
) -> None:
    rule = rules.ByteRate("20/minute", key=rules.by_ip)
    guard = Guard(rules=[rule], storage=own_redis.url, clock=Clock(0.0), on_storage_error=policy)
    app = WSGuardMiddleware(echo, guard=guard)
    try:
        own_redis.kill()
        ws = ScriptedWebSocket(app, client=("10.0.0.1", 40000))
        await ws.connect()
        await ws.expect("websocket.accept")
        if policy == "deny":
            await ws.expect("websocket.close", code=1013, reason="storage_unavailable")
        else:
            await ws.send_text("abc")  # fail open: this process counts on its own
            await ws.expect("websocket.send", text="abc")
            await ws.disconnect()
        await ws.finished()
    finally:
        await guard.shutdown()


async def test_a_shared_key_on_redis_warns_once_then_closes(redis: RedisServer) -> None:
    rule = rules.ByteRate("10/minute", key=rules.by_ip, warn_at=0.5)
    guard = Guard(rules=[rule], storage=redis.url, clock=Clock(0.0))
    app = WSGuardMiddleware(echo, guard=guard)
    notice = json.dumps({"type": "rate.warning", "rule": "rate_limited", "retry_after": 60})
    try:
        ws = await opened(app)
        await ws.send_text("abcd")
        await ws.expect("websocket.send", text="abcd")
        await settle(rule)
        await ws.send_text("e")  # 5 of 10 bytes: the threshold
        got = [(await ws.expect("websocket.send"))["text"] for _ in range(2)]
        assert sorted(got) == sorted(["e", notice])
        await settle(rule)
        await ws.send_text("fghij")  # exactly 10
        await ws.expect("websocket.send", text="fghij")
        await settle(rule)
        await ws.send_text("k")
        await ws.expect("websocket.close", code=1008, reason="rate_limited; retry-after=60")
        await ws.finished()
    finally:
        await guard.shutdown()
