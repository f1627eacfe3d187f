"""The control plane across processes: two uvicorn processes share one real redis-server.

This test process is the third process: a ``Guard`` on the same Redis and
namespace, started, calls ``disconnect`` and ``revoke`` as an admin script
would. The clients are the real ``websockets`` client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from urllib.parse import quote

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support.children import running
from tests.support.control_app import NAMESPACE
from tests.support.helpers import eventually
from tests.support.jwt_keys import mint
from tests.support.paths import ROOT, SERVER_PATH
from tests.support.redis_server import RedisServer
from tests.support.servers import free_port
from tests.support.ws_closes import server_close
from ws_guard import Guard

pytestmark = [pytest.mark.redis, pytest.mark.e2e]

CHANNEL = f"{NAMESPACE}:control"
#: An AutoBan refusal, whatever seconds its hint has left.
BANNED_PREFIX = "banned; retry-after="


def subscribers(redis: RedisServer) -> int:
    reply = redis.command("PUBSUB", "NUMSUB", CHANNEL)
    return int(reply.split(b"\r\n")[-2].lstrip(b":"))


@contextlib.contextmanager
def two_workers(redis: RedisServer, count: int = 2) -> Iterator[list[str]]:
    """*count* uvicorn processes of tests/support/control_app.py; their WebSocket URLs."""
    env = dict(os.environ, PYTHONPATH=SERVER_PATH, WS_GUARD_TEST_REDIS=redis.url)
    ports = [free_port() for _ in range(count)]
    with contextlib.ExitStack() as stack:
        for port in ports:
            command = [sys.executable, "-m", "uvicorn", "tests.support.control_app:make_app"]
            command += ["--factory", "--port", str(port), "--log-level", "warning"]
            stack.enter_context(running(command, sig=signal.SIGTERM, cwd=ROOT, env=env))
        yield [f"ws://127.0.0.1:{port}/ws?token=" for port in ports]


@contextlib.asynccontextmanager
async def admin(redis: RedisServer) -> AsyncIterator[Guard]:
    """The third process's guard: same Redis, same namespace, no rules of its own."""
    guard = Guard(storage=redis.url, namespace=NAMESPACE)
    await guard.startup()
    try:
        yield guard
    finally:
        await guard.shutdown()


async def open_socket(url: str) -> ClientConnection:
    """Connect once the server listens (its start is bounded), and check the echo."""
    deadline = time.monotonic() + 20
    while True:
        try:
            ws = await connect(url)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
    await ws.send("ping")
    assert await asyncio.wait_for(ws.recv(), 5) == "ping"
    return ws


async def test_disconnect_from_a_third_process_closes_the_user_in_both_within_a_second(
    redis: RedisServer,
) -> None:
    with two_workers(redis) as urls:
        alice = [await open_socket(url + mint("alice")) for url in urls]
        bob = [await open_socket(url + mint("bob")) for url in urls]
        await eventually(lambda: subscribers(redis) == 2, timeout=10)
        async with admin(redis) as guard:
            started = time.monotonic()
            assert await guard.disconnect(subject="alice", code=4001, reason="blocked") == 0
            closes = await asyncio.gather(*(server_close(ws) for ws in alice))
            elapsed = time.monotonic() - started
        assert closes == [(4001, "blocked"), (4001, "blocked")]
        assert elapsed < 1.0
        for ws in bob:  # other users stay
            await ws.send("still here")
            assert await asyncio.wait_for(ws.recv(), 5) == "still here"
            await ws.close()


async def test_a_revoked_jti_is_refused_in_both_processes_and_on_refresh(
    redis: RedisServer,
) -> None:
    with two_workers(redis) as urls:
        holder = await open_socket(urls[0] + mint("alice", jti="t-1"))
        other = await open_socket(urls[1] + mint("alice", jti="t-2", exp_in=600))
        await eventually(lambda: subscribers(redis) == 2, timeout=10)
        async with admin(redis) as guard:
            assert await guard.revoke(jti="t-1", until=time.time() + 60) == 0
            assert await guard.revoke(jti="t-3", until=time.time() + 60) == 0
        assert await server_close(holder) == (1008, "token_revoked")
        for url in urls:  # refused at the handshake by either process
            async with connect(url + mint("alice", jti="t-1")) as ws:
                assert await server_close(ws) == (1008, "token_revoked")
        # The key lives in Redis with a TTL, so nothing outlives the revocation.
        ttl = int(redis.command("PTTL", f"{NAMESPACE}:revoked:jti:t-1").split(b":")[1])
        assert 50_000 < ttl <= 60_000
        # A refresh to a revoked token, in the process that did not revoke it.
        refresh = json.dumps({"type": "auth.refresh", "token": mint("alice", jti="t-3")})
        await other.send(refresh)
        assert await server_close(other) == (1008, "token_revoked")


async def test_redis_down_nothing_hangs_and_allow_keeps_admitting(own_redis: RedisServer) -> None:
    with two_workers(own_redis) as urls:
        ws = await open_socket(urls[0] + mint("alice"))
        await eventually(lambda: subscribers(own_redis) == 2, timeout=10)
        async with admin(own_redis) as guard:
            own_redis.kill()
            started = time.monotonic()
            # Applied here (nothing open here), the publish fails: counted, not raised.
            assert await guard.disconnect(subject="alice") == 0
            assert await guard.revoke(subject="bob", until=time.time() + 60) == 0
            assert time.monotonic() - started < 5.0
            assert guard.metrics.snapshot().storage_errors >= 2
        # on_storage_error="allow": the revocation check fails open, the handshake passes.
        started = time.monotonic()
        fresh = await open_socket(urls[1] + mint("carol"))
        assert time.monotonic() - started < 5.0
        for open_ws in (ws, fresh):
            await open_ws.close()


async def handshake(url: str) -> tuple[int | None, str | None] | None:
    """The close a handshake gets (accept-then-close), or None when it echoes."""
    async with connect(url) as ws:
        try:
            await ws.send("ping")
            await asyncio.wait_for(ws.recv(), 5)
        except ConnectionClosed:
            return ws.close_code, ws.close_reason
    return None


async def test_a_ban_reaches_the_other_process_lives_in_redis_and_unban_lifts_it(
    redis: RedisServer,
) -> None:
    banned = (1008, "banned; retry-after=30")
    with two_workers(redis) as urls:
        await open_socket(urls[0] + mint("warm-up"))  # both listen before the count starts
        await open_socket(urls[1] + mint("warm-up"))
        await eventually(lambda: subscribers(redis) == 2, timeout=10)
        for _ in range(3):  # three policy closes in process A
            assert await handshake(urls[0] + "not-a-jwt") == (1008, "token_invalid")
        assert await handshake(urls[0] + mint("alice")) == banned
        # Process B hears of it over pub/sub (bounded poll on the real condition).
        await eventually(lambda: _banned_in(urls[1] + mint("alice")), timeout=5)
        key = f"{NAMESPACE}:ban:{quote('by_ip:3/60s', safe='')}:127.0.0.1"
        ttl = int(redis.command("PTTL", key).split(b":")[1])
        assert 25_000 < ttl <= 30_000
        # A process started during the ban loads it from Redis.
        with two_workers(redis, count=1) as (late,):
            await first_answer(late + mint("warm-up"))  # it listens
            # It loads the bans after subscribing, while it already serves.
            await eventually(lambda: _banned_in(late + mint("alice")), timeout=10)
            assert subscribers(redis) == 3
            async with admin(redis) as guard:
                await eventually(lambda: guard.channel.subscribed, timeout=10)  # loaded
                assert await guard.unban("127.0.0.1") == 1  # lifted here and everywhere
            assert redis.command("EXISTS", key).strip() == b":0"
            for url in (*urls, late):
                await eventually(lambda url=url: _admitted(url + mint("alice")), timeout=5)


async def first_answer(url: str) -> tuple[int | None, str | None] | None:
    """:func:`handshake` once the server listens (its start is bounded): its first answer."""
    deadline = time.monotonic() + 20
    while True:
        try:
            return await handshake(url)
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def _banned_in(url: str) -> bool:
    # The hint counts down from 30 while the test polls (a slow run's load can take seconds).
    close = await handshake(url)
    return close is not None and close[0] == 1008 and str(close[1]).startswith(BANNED_PREFIX)


async def _admitted(url: str) -> bool:
    return await handshake(url) is None


async def test_policy_closes_spread_over_two_processes_add_up_to_a_ban(
    redis: RedisServer,
) -> None:
    # AutoBan(after=3): two closes in process A and one in B, none banned alone.
    with two_workers(redis) as urls:
        await open_socket(urls[0] + mint("warm-up"))
        await open_socket(urls[1] + mint("warm-up"))
        await eventually(lambda: subscribers(redis) == 2, timeout=10)
        for url in (urls[0], urls[1], urls[0]):
            assert await handshake(url + "not-a-jwt") == (1008, "token_invalid")
        for url in urls:
            await eventually(lambda url=url: _banned_in(url + mint("alice")), timeout=5)
