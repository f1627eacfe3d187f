"""Attacks on the handshake's pipelined Redis checks: slots, counts and errors.

In process, real ``redis-server``; where a reply must be late, a real TCP
proxy between the guard and Redis that forwards every command at once and
holds Redis' replies until the test lets them through (as a slow network
or a stalled Redis does), so Redis has run a script whose answer the guard
has not read yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator

import pytest

from tests.support.apps import Held
from tests.support.helpers import eventually
from tests.support.jwt_keys import SECRET, mint
from tests.support.redis_server import RedisServer
from tests.support.reply_gate import ReplyGate
from ws_guard import Guard, WSGuardMiddleware, rules
from ws_guard._core.decisions import Close
from ws_guard.rules.base import Stage
from ws_guard.rules.context import RuleContext
from ws_guard.rules.keys import user_key
from ws_guard.rules.limits.keying import redis_key
from ws_guard.testing import ScriptedWebSocket

pytestmark = pytest.mark.redis


@pytest.fixture
async def app() -> AsyncIterator[Held]:
    held = Held()
    yield held
    held.release.set()


@pytest.fixture
async def gate(redis: RedisServer) -> AsyncIterator[ReplyGate]:
    proxy = ReplyGate(redis.port)
    await proxy.start()
    yield proxy
    await proxy.stop()


@pytest.mark.parametrize("with_rate", [True, False], ids=["batched", "alone"])
async def test_a_handshake_cancelled_after_redis_took_its_slot_gives_it_back(
    redis: RedisServer, gate: ReplyGate, app: Held, with_rate: bool
) -> None:
    # The server cancels the handler (shutdown, a client gone on a server that
    # cancels) while the slot's reply is on its way: Redis holds the slot, the
    # guard never heard of it. It must not stay taken for 3 heartbeats.
    cap = rules.MaxConnectionsPerKey(2, key=rules.by_ip, heartbeat=300.0)
    chosen: list[rules.Rule] = [rules.ConnectRate("100/minute"), cap] if with_rate else [cap]
    guard = Guard(rules=chosen, storage=f"redis://127.0.0.1:{gate.port}/0")
    try:
        middleware = WSGuardMiddleware(app, guard=guard)
        first = ScriptedWebSocket(middleware)
        await first.connect()
        await first.expect("websocket.accept")
        slots = redis_key(guard.namespace, "slots", cap.id, "127.0.0.1")
        gate.open.clear()
        cancelled = ScriptedWebSocket(middleware)
        await cancelled.connect()
        await eventually(lambda: redis.zcard(slots) == 2, what="the second slot taken in Redis")
        assert cancelled.task is not None
        cancelled.task.cancel()
        gate.open.set()
        with contextlib.suppress(asyncio.CancelledError):
            await cancelled.finished()
        # The cancelled handshake's slot is given back when it ends: the cap
        # of 2 has room for the next one beside the first connection.
        assert redis.zcard(slots) == 1
        third = ScriptedWebSocket(middleware)
        await third.connect()
        await third.expect("websocket.accept")
        assert redis.zcard(slots) == 2
        assert guard.metrics.snapshot().closes_by_rule == {}  # not too_many_connections
        app.release.set()
        for ws in (first, third):
            await ws.finished()
        assert redis.zcard(slots) == 0
    finally:
        await guard.shutdown()


class Fragile(rules.Rule):
    """A rule of one's own, staged between ConnectRate and the cap, with a bug
    a client can trigger (it raises on a header it does not expect)."""

    stage = Stage.AUTH + 1

    async def admit(self, conn: RuleContext) -> Close | None:
        if conn.header("x-odd") is not None:
            raise ValueError("a bug in the rule")
        return None


async def test_every_attempt_counts_when_a_rule_after_connect_rate_raises(
    redis: RedisServer, app: Held
) -> None:
    # ConnectRate's hit waits while the rules after it run; a rule that
    # raises must not take the attempt out of the count, or a client that
    # can trigger that bug is never rate limited.
    cap = rules.MaxConnectionsPerKey(10, key=rules.by_ip, heartbeat=300.0)
    guard = Guard(rules=[rules.ConnectRate("2/minute"), Fragile(), cap], storage=redis.url)
    try:
        middleware = WSGuardMiddleware(app, guard=guard)
        for _ in range(2):
            odd = ScriptedWebSocket(middleware, headers=[(b"x-odd", b"1")])
            await odd.connect()
            with pytest.raises(ValueError, match="a bug in the rule"):
                await odd.finished()
        ws = ScriptedWebSocket(middleware)
        await ws.connect()
        await ws.expect("websocket.accept")
        close = await ws.expect("websocket.close")
        assert (close["code"], close["reason"]) == (1008, "connect_rate_limited; retry-after=60")
        await ws.finished()
        assert cap.count("127.0.0.1") == 0
        slots = redis_key(guard.namespace, "slots", cap.id, "127.0.0.1")
        assert redis.zcard(slots) == 0
    finally:
        await guard.shutdown()


@pytest.mark.parametrize("policy", ["deny", "allow"])
async def test_one_reply_of_the_pipeline_failing_is_that_rule_s_storage_error(
    redis: RedisServer, app: Held, policy: str
) -> None:
    # ConnectRate's key holds a value of another type (another tool wrote it):
    # its script fails with WRONGTYPE while the cap's succeeds in the same
    # pipeline. "deny" refuses with 1013 and gives the cap's slot back;
    # "allow" counts in this process and keeps the slot.
    cap = rules.MaxConnectionsPerKey(10, key=rules.by_ip, heartbeat=300.0)
    rate = rules.ConnectRate("100/minute")
    guard = Guard(rules=[rate, cap], storage=redis.url, on_storage_error=policy)
    try:
        middleware = WSGuardMiddleware(app, guard=guard)
        first = ScriptedWebSocket(middleware)
        await first.connect()
        await first.expect("websocket.accept")
        rate_key = redis_key(guard.namespace, "connect", rate.id, "127.0.0.1")
        redis.command("DEL", rate_key)
        redis.command("SET", rate_key, "not a hash")
        slots = redis_key(guard.namespace, "slots", cap.id, "127.0.0.1")
        ws = ScriptedWebSocket(middleware)
        await ws.connect()
        await ws.expect("websocket.accept")
        if policy == "deny":
            close = await ws.expect("websocket.close")
            assert (close["code"], close["reason"]) == (1013, "storage_unavailable")
            await ws.finished()
            assert redis.zcard(slots) == 1
            assert cap.count("127.0.0.1") == 1
        else:
            assert redis.zcard(slots) == 2
            assert cap.count("127.0.0.1") == 2
        assert guard.metrics.snapshot().storage_errors == 1
        app.release.set()
        for done in (first, ws):
            await done.finished()
        assert redis.zcard(slots) == 0
    finally:
        await guard.shutdown()


async def test_after_a_redis_restart_the_batch_loads_its_scripts_and_counts_once(
    own_redis: RedisServer, app: Held
) -> None:
    # A restarted Redis has lost the scripts and the pool's connections: the
    # first handshake after it reconnects, loads both scripts, and is decided
    # as usual (policy "deny", so a storage error would show as a 1013).
    cap = rules.MaxConnectionsPerKey(10, key=rules.by_ip, heartbeat=300.0)
    rate = rules.ConnectRate("2/minute")
    guard = Guard(rules=[rate, cap], storage=own_redis.url, on_storage_error="deny")
    try:
        middleware = WSGuardMiddleware(app, guard=guard)
        first = ScriptedWebSocket(middleware)
        await first.connect()
        await first.expect("websocket.accept")
        own_redis.kill()
        own_redis.start()
        second = ScriptedWebSocket(middleware)
        await second.connect()
        await second.expect("websocket.accept")
        slots = redis_key(guard.namespace, "slots", cap.id, "127.0.0.1")
        assert own_redis.zcard(slots) == 1  # the restart lost the first one's slot
        # The restarted Redis counted one attempt: one more is admitted, the next refused.
        third = ScriptedWebSocket(middleware)
        await third.connect()
        await third.expect("websocket.accept")
        fourth = ScriptedWebSocket(middleware)
        await fourth.connect()
        await fourth.expect("websocket.accept")
        close = await fourth.expect("websocket.close")
        assert (close["code"], close["reason"]) == (1008, "connect_rate_limited; retry-after=60")
        await fourth.finished()
        assert guard.metrics.snapshot().storage_errors == 0
        assert own_redis.zcard(slots) == 2
        app.release.set()
        for ws in (first, second, third):
            await ws.finished()
        assert own_redis.zcard(slots) == 0
    finally:
        await guard.shutdown()


def evalsha_calls(server: RedisServer) -> int:
    """``EVALSHA`` commands the server ran so far (``INFO commandstats``)."""
    found = re.search(rb"cmdstat_evalsha:calls=(\d+)", server.command("INFO", "commandstats"))
    return 0 if found is None else int(found.group(1))


def zrem_calls(server: RedisServer) -> int:
    found = re.search(rb"cmdstat_zrem:calls=(\d+)", server.command("INFO", "commandstats"))
    return 0 if found is None else int(found.group(1))


def tenant(conn: RuleContext) -> str | None:
    return conn.header("x-tenant")


async def test_a_key_that_keeps_hammering_takes_no_slot_of_another_key(
    redis: RedisServer, gate: ReplyGate, app: Held
) -> None:
    # ConnectRate by address, a cap by a header the client writes. A client
    # refused by the rate moments ago that keeps trying must not take a slot
    # of the tenant it names, even for a round trip: meanwhile that tenant's
    # own clients would be refused too_many_connections. Its attempts are
    # answered by ConnectRate alone, as before the handshake batch.
    cap = rules.MaxConnectionsPerKey(1, key=tenant, heartbeat=300.0)
    guard = Guard(
        rules=[rules.ConnectRate("1/minute"), cap], storage=f"redis://127.0.0.1:{gate.port}/0"
    )
    hammer = ("10.0.0.1", 40000)
    named = [(b"x-tenant", b"acme")]
    limited = (1008, "connect_rate_limited; retry-after=60")
    try:
        middleware = WSGuardMiddleware(app, guard=guard)
        first = ScriptedWebSocket(middleware, client=hammer)  # no tenant: not capped
        await first.connect()
        await first.expect("websocket.accept")
        refused = ScriptedWebSocket(middleware, client=hammer, headers=named)
        await refused.connect()
        await refused.expect("websocket.accept")
        close = await refused.expect("websocket.close")
        assert (close["code"], close["reason"]) == limited
        await refused.finished()
        slots = redis_key(guard.namespace, "slots", cap.id, "acme")
        before = evalsha_calls(redis)
        removed = zrem_calls(redis)
        gate.open.clear()
        again = ScriptedWebSocket(middleware, client=hammer, headers=named)
        await again.connect()
        await eventually(lambda: evalsha_calls(redis) > before, what="the attempt reached Redis")
        assert redis.zcard(slots) == 0
        assert evalsha_calls(redis) == before + 1  # ConnectRate's script alone
        gate.open.set()
        await again.expect("websocket.accept")
        close = await again.expect("websocket.close")
        assert (close["code"], close["reason"]) == limited
        await again.finished()
        assert zrem_calls(redis) == removed  # no slot taken, none to give back
        # The tenant's own client, from another address, has its slot.
        own = ScriptedWebSocket(middleware, client=("10.0.0.2", 40000), headers=named)
        await own.connect()
        await own.expect("websocket.accept")
        assert redis.zcard(slots) == 1
        assert guard.metrics.snapshot().closes_by_rule == {"connect_rate_limited": 2}
        app.release.set()
        for ws in (first, own):
            await ws.finished()
    finally:
        await guard.shutdown()


class Unbatched(rules.ConnectRate):
    """ConnectRate with ``admit`` overridden alone: one call of its own, as before the batch."""

    async def admit(self, conn: RuleContext) -> Close | None:
        return await super().admit(conn)


@pytest.mark.parametrize("shadow", [False, True], ids=["enforced", "shadow"])
async def test_connect_rate_counts_as_with_one_call_per_rule(
    redis: RedisServer, app: Held, shadow: bool
) -> None:
    # The same attempts against the batched rule and one that awaits its own
    # call (the same counters in Redis): the same closes, the same counts.
    outcomes: list[list[tuple[int, str] | None]] = []
    counters: list[dict[str, int]] = []
    for kind in (rules.ConnectRate, Unbatched):
        redis.command("FLUSHALL")
        cap = rules.MaxConnectionsPerKey(3, key=tenant, heartbeat=300.0)
        rate = kind("3/minute", enforce=not shadow)
        guard = Guard(rules=[rate, cap], storage=redis.url)
        seen: list[tuple[int, str] | None] = []
        try:
            middleware = WSGuardMiddleware(app, guard=guard)
            opened = []
            for n in range(7):
                ws = ScriptedWebSocket(middleware, headers=[(b"x-tenant", b"t%d" % (n % 2))])
                await ws.connect()
                await ws.expect("websocket.accept")
                if n >= 3 and not shadow:
                    close = await ws.expect("websocket.close")
                    seen.append((close["code"], close["reason"]))
                    await ws.finished()
                else:
                    seen.append(None)
                    opened.append(ws)
            snap = guard.metrics.snapshot()
            counters.append(
                dict(snap.closes_by_rule) | {"slots": cap.count("t0") + cap.count("t1")}
            )
            app.release.set()
            for ws in opened:
                await ws.finished()
            app.release.clear()
        finally:
            await guard.shutdown()
        outcomes.append(seen)
    assert outcomes[0] == outcomes[1]
    assert counters[0] == counters[1]


async def test_a_cached_token_revoked_only_in_redis_is_refused_through_the_batch(
    redis: RedisServer, app: Held
) -> None:
    # The token is in the verified cache; another process revoked its
    # subject in Redis after this one loaded the revocations. The hit still
    # has its EXISTS, in the pipeline beside ConnectRate's call.
    auth = rules.JWTAuth(SECRET, algorithms=["HS256"], verified_cache=10)
    cap = rules.MaxConnectionsPerKey(10, key=rules.by_user, heartbeat=300.0)
    guard = Guard(rules=[rules.ConnectRate("100/minute"), auth, cap], storage=redis.url)
    headers = [(b"authorization", f"Bearer {mint('alice', jti='j1')}".encode())]
    try:
        middleware = WSGuardMiddleware(app, guard=guard)
        first = ScriptedWebSocket(middleware, headers=headers)
        await first.connect()
        await first.expect("websocket.accept")
        await eventually(lambda: guard.channel.subscribed, what="control channel subscribed")
        key = guard.channel.revocation_key("jti", "j1")
        redis.command("SET", key, "1", "PX", "60000")
        again = ScriptedWebSocket(middleware, headers=headers)
        await again.connect()
        await again.expect("websocket.accept")
        close = await again.expect("websocket.close")
        assert (close["code"], close["reason"]) == (1008, "token_revoked")
        await again.finished()
        assert auth.verifier.cache is not None
        assert (auth.verifier.cache.hits, auth.verifier.cache.misses) == (1, 1)
        slots = redis_key(guard.namespace, "slots", cap.id, user_key(None, "alice"))
        assert redis.zcard(slots) == 1
        app.release.set()
        await first.finished()
    finally:
        await guard.shutdown()


async def test_a_key_over_its_tier_rate_that_keeps_trying_takes_no_slot(
    redis: RedisServer, app: Held
) -> None:
    # The same with a per-tier ConnectRate (after auth, beside the cap in
    # one batch): once it refused a key, that key's attempts are answered
    # by the rate alone; no slot is taken and given back for them.
    auth = rules.JWTAuth(SECRET, algorithms=["HS256"])
    tiered = rules.ConnectRate(lambda info: "1/minute", key=rules.by_ip)
    cap = rules.MaxConnectionsPerKey(5, key=tenant, heartbeat=300.0)
    guard = Guard(rules=[auth, tiered, cap], storage=redis.url)
    headers = [(b"authorization", f"Bearer {mint('alice')}".encode()), (b"x-tenant", b"acme")]
    limited = (1008, "connect_rate_limited; retry-after=60")
    try:
        middleware = WSGuardMiddleware(app, guard=guard)
        first = ScriptedWebSocket(middleware, headers=headers)
        await first.connect()
        await first.expect("websocket.accept")
        outcomes = []
        counts = []
        for _ in range(3):
            scripts, removed = evalsha_calls(redis), zrem_calls(redis)
            ws = ScriptedWebSocket(middleware, headers=headers)
            await ws.connect()
            await ws.expect("websocket.accept")
            close = await ws.expect("websocket.close")
            outcomes.append((close["code"], close["reason"]))
            await ws.finished()
            counts.append((evalsha_calls(redis) - scripts, zrem_calls(redis) - removed))
        assert outcomes == [limited] * 3
        # The first refusal shared its round trip with the cap's call (taken,
        # given back); the key's next attempts cost the rate's call alone.
        assert counts == [(2, 1), (1, 0), (1, 0)]
        slots = redis_key(guard.namespace, "slots", cap.id, "acme")
        assert redis.zcard(slots) == 1
        app.release.set()
        await first.finished()
    finally:
        await guard.shutdown()
