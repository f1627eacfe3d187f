"""A handshake's Redis-backed checks go out together: one round trip when it is admitted.

``ConnectRate`` and ``MaxConnectionsPerKey`` on Redis hand their scripts to
admission (``Rule.prepare``), which sends them in one pipeline and decides
in stage order. Round trips are counted by the real ``redis-server``
(``INFO stats`` ``total_reads_processed``: one read per batch of commands
a client sends; a pipeline's commands arrive in one). The decisions stay
those of one call per rule: the exact close codes and reasons, the
connect-rate count of every attempt, a slot given back when an earlier
check refuses, and an outage counted as before. In process, real
``redis-server``.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest

from tests.support.apps import Held
from tests.support.helpers import eventually
from tests.support.jwt_keys import SECRET, mint
from tests.support.redis_server import RedisServer, redis_cluster
from ws_guard import Guard, WSGuardMiddleware, rules
from ws_guard._core.decisions import Close
from ws_guard.rules.context import RuleContext
from ws_guard.rules.keys import user_key
from ws_guard.rules.limits.keying import redis_key
from ws_guard.testing import ScriptedWebSocket

pytestmark = pytest.mark.redis

#: ``by_user``'s key for alice's tokens (no ``iss``).
ALICE = user_key(None, "alice")

#: Reads one measurement itself costs the server: the INFO, and its connection's end.
_INFO_READS = 2


@pytest.fixture
async def app() -> AsyncIterator[Held]:
    """The held app; released at the end whatever the test's outcome, so no task hangs."""
    held = Held()
    yield held
    held.release.set()


@pytest.fixture
async def guards() -> AsyncIterator[list[Guard]]:
    """Guards the test made; each is shut down at the end (its Redis clients, its tasks)."""
    made: list[Guard] = []
    yield made
    for guard in made:
        await guard.shutdown()


def reads(server: RedisServer) -> int:
    """The server's ``total_reads_processed`` so far."""
    found = re.search(rb"total_reads_processed:(\d+)", server.command("INFO", "stats"))
    if found is None:
        raise AssertionError("INFO stats has no total_reads_processed")
    return int(found.group(1))


async def quiet(server: RedisServer) -> int:
    """Wait until nothing but the measurement reaches the server; its read count then."""
    last = reads(server)

    def settled() -> bool:
        nonlocal last
        now = reads(server)
        idle, last = now - last == _INFO_READS, now
        return idle

    await eventually(settled, what="Redis idle")
    return last


async def round_trips(server: RedisServer, guard: Guard, action: object) -> int:
    """Round trips (client reads at the server) that awaiting *action* costs.

    After the guard's control channel has subscribed and loaded what Redis
    holds (it starts beside the guard's first handshake), and Redis is idle.
    """
    await eventually(lambda: guard.channel.subscribed, what="control channel subscribed")
    before = await quiet(server)
    await action  # type: ignore[misc]
    return reads(server) - before - _INFO_READS


def bearer(sub: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {mint(sub)}".encode())]


async def admitted(app: WSGuardMiddleware, headers: list[tuple[bytes, bytes]]) -> ScriptedWebSocket:
    ws = ScriptedWebSocket(app, headers=headers)
    await ws.connect()
    await ws.expect("websocket.accept")
    return ws


async def refused(app: WSGuardMiddleware, headers: list[tuple[bytes, bytes]]) -> tuple[int, str]:
    ws = ScriptedWebSocket(app, headers=headers)
    await ws.connect()
    await ws.expect("websocket.accept")
    close = await ws.expect("websocket.close")
    await ws.finished()
    return close["code"], close["reason"]


async def test_connect_rate_and_cap_take_one_round_trip(
    redis: RedisServer, app: Held, guards: list[Guard]
) -> None:
    cap = rules.MaxConnectionsPerKey(10, key=rules.by_ip, heartbeat=300.0)
    guard = Guard(rules=[rules.ConnectRate("100/minute"), cap], storage=redis.url)
    guards.append(guard)
    middleware = WSGuardMiddleware(app, guard=guard)
    first = await admitted(middleware, [])  # starts the guard, loads the scripts
    box: list[ScriptedWebSocket] = []

    async def second() -> None:
        box.append(await admitted(middleware, []))

    assert await round_trips(redis, guard, second()) == 1
    slots = redis_key(guard.namespace, "slots", cap.id, "127.0.0.1")
    assert redis.zcard(slots) == 2
    app.release.set()
    for ws in (first, *box):
        await ws.finished()
    assert redis.zcard(slots) == 0


async def test_with_jwt_auth_the_revocation_check_joins_the_connect_rate_call(
    redis: RedisServer, app: Held, guards: list[Guard]
) -> None:
    # ConnectRate (by_ip), JWTAuth, then the cap by user: the cap's key is
    # the verified subject, so its call goes out after the auth rule's own
    # revocation check, which shares ConnectRate's round trip. Three calls
    # one by one before; two round trips now.
    cap = rules.MaxConnectionsPerKey(10, key=rules.by_user, heartbeat=300.0)
    guard = Guard(
        rules=[rules.ConnectRate("100/minute"), rules.JWTAuth(SECRET, algorithms=["HS256"]), cap],
        storage=redis.url,
    )
    guards.append(guard)
    middleware = WSGuardMiddleware(app, guard=guard)
    first = await admitted(middleware, bearer("alice"))
    box: list[ScriptedWebSocket] = []

    async def second() -> None:
        box.append(await admitted(middleware, bearer("alice")))

    assert await round_trips(redis, guard, second()) == 2
    assert redis.zcard(redis_key(guard.namespace, "slots", cap.id, ALICE)) == 2
    app.release.set()
    for ws in (first, *box):
        await ws.finished()


async def test_two_guards_sharing_redis_hold_the_cap_exactly(
    redis: RedisServer, app: Held, guards: list[Guard]
) -> None:
    caps = [rules.MaxConnectionsPerKey(3, key=rules.by_ip, heartbeat=300.0) for _ in range(2)]
    guards.extend(
        Guard(rules=[rules.ConnectRate("100/minute"), cap], storage=redis.url, namespace="shared")
        for cap in caps
    )
    apps = [WSGuardMiddleware(app, guard=guard) for guard in guards]
    open_ = [
        await admitted(apps[0], []),
        await admitted(apps[1], []),
        await admitted(apps[0], []),
    ]
    for middleware in apps:
        assert await refused(middleware, []) == (1008, "too_many_connections")
    slots = redis_key("shared", "slots", caps[0].id, "127.0.0.1")
    assert redis.zcard(slots) == 3  # the refused handshakes took nothing
    assert [cap.count("127.0.0.1") for cap in caps] == [2, 1]
    app.release.set()
    for ws in open_:
        await ws.finished()
    assert redis.zcard(slots) == 0
    snaps = [guard.metrics.snapshot() for guard in guards]
    assert [s.closes_by_rule for s in snaps] == [{"too_many_connections": 1}] * 2
    assert [s.handshakes_admitted for s in snaps] == [2, 1]


async def test_a_connect_rate_refusal_gives_the_slot_back(
    redis: RedisServer, app: Held, guards: list[Guard]
) -> None:
    cap = rules.MaxConnectionsPerKey(10, key=rules.by_ip, heartbeat=300.0)
    guard = Guard(rules=[rules.ConnectRate("2/minute"), cap], storage=redis.url)
    guards.append(guard)
    middleware = WSGuardMiddleware(app, guard=guard)
    held = [await admitted(middleware, []), await admitted(middleware, [])]
    slots = redis_key(guard.namespace, "slots", cap.id, "127.0.0.1")
    outcome: list[tuple[int, str]] = []

    async def third() -> None:
        outcome.append(await refused(middleware, []))

    # The pipeline, then the slot's ZREM: a second round trip on this path only.
    assert await round_trips(redis, guard, third()) == 2
    assert outcome == [(1008, "connect_rate_limited; retry-after=60")]
    assert redis.zcard(slots) == 2
    assert cap.count("127.0.0.1") == 2
    # The refused attempt counted: the next one is refused as well.
    assert await refused(middleware, []) == (1008, "connect_rate_limited; retry-after=60")
    app.release.set()
    for ws in held:
        await ws.finished()
    assert redis.zcard(slots) == 0
    snap = guard.metrics.snapshot()
    assert snap.closes_by_rule == {"connect_rate_limited": 2}
    assert snap.storage_errors == 0


async def test_a_cap_refusal_still_counts_the_attempt(
    redis: RedisServer, app: Held, guards: list[Guard]
) -> None:
    cap = rules.MaxConnectionsPerKey(1, key=rules.by_ip, heartbeat=300.0)
    guard = Guard(rules=[rules.ConnectRate("3/minute"), cap], storage=redis.url)
    guards.append(guard)
    middleware = WSGuardMiddleware(app, guard=guard)
    first = await admitted(middleware, [])
    assert await refused(middleware, []) == (1008, "too_many_connections")
    assert await refused(middleware, []) == (1008, "too_many_connections")
    # Three attempts counted (two refused by the cap): the fourth is over the rate.
    assert await refused(middleware, []) == (1008, "connect_rate_limited; retry-after=60")
    assert redis.zcard(redis_key(guard.namespace, "slots", cap.id, "127.0.0.1")) == 1
    app.release.set()
    await first.finished()
    assert guard.metrics.snapshot().closes_by_rule == {
        "too_many_connections": 2,
        "connect_rate_limited": 1,
    }


async def test_an_auth_refusal_behind_connect_rate_takes_no_slot(
    redis: RedisServer, app: Held, guards: list[Guard]
) -> None:
    cap = rules.MaxConnectionsPerKey(10, key=rules.by_user, heartbeat=300.0)
    guard = Guard(
        rules=[rules.ConnectRate("1/minute"), rules.JWTAuth(SECRET, algorithms=["HS256"]), cap],
        storage=redis.url,
    )
    guards.append(guard)
    middleware = WSGuardMiddleware(app, guard=guard)
    assert await refused(middleware, []) == (1008, "token_missing")
    # Over the rate and without a token: ConnectRate comes first, as it always did.
    assert await refused(middleware, []) == (1008, "connect_rate_limited; retry-after=60")
    assert await refused(middleware, bearer("alice")) == (
        1008,
        "connect_rate_limited; retry-after=60",
    )
    assert redis.zcard(redis_key(guard.namespace, "slots", cap.id, ALICE)) == 0
    assert guard.metrics.snapshot().closes_by_rule == {
        "token_missing": 1,
        "connect_rate_limited": 2,
    }


@pytest.mark.parametrize("policy", ["allow", "deny"])
async def test_an_outage_is_counted_and_decided_as_before(
    own_redis: RedisServer, policy: str, app: Held, guards: list[Guard]
) -> None:
    cap = rules.MaxConnectionsPerKey(5, key=rules.by_ip, heartbeat=300.0)
    guard = Guard(
        rules=[rules.ConnectRate("2/minute"), cap],
        storage=own_redis.url,
        on_storage_error=policy,
    )
    guards.append(guard)
    middleware = WSGuardMiddleware(app, guard=guard)
    held = [await admitted(middleware, [])]
    own_redis.kill()
    if policy == "deny":
        # ConnectRate fails first and refuses; the cap's failed call is not counted.
        assert await refused(middleware, []) == (1013, "storage_unavailable")
        assert guard.metrics.snapshot().storage_errors == 1
        assert guard.metrics.snapshot().closes_by_rule == {"storage_unavailable": 1}
    else:
        # Each rule fails open to this process' own count: both failures counted.
        for n in (1, 2):
            held.append(await admitted(middleware, []))
            assert guard.metrics.snapshot().storage_errors == 2 * n
        # ConnectRate's own count (2/minute in this process) refuses the next
        # attempt: its failure counts, the cap's (decided after it) does not.
        assert await refused(middleware, []) == (1008, "connect_rate_limited; retry-after=60")
        assert guard.metrics.snapshot().storage_errors == 5
        assert guard.metrics.snapshot().closes_by_rule == {"connect_rate_limited": 1}
    assert cap.count("127.0.0.1") == len(held)
    app.release.set()
    for ws in held:
        await ws.finished()
    assert cap.count("127.0.0.1") == 0


def auth_guard(storage: str, rate: str = "100/minute") -> tuple[Guard, rules.MaxConnectionsPerKey]:
    """ConnectRate(by_ip), JWTAuth(HS256, bearer), MaxConnectionsPerKey(10, by_user)."""
    cap = rules.MaxConnectionsPerKey(10, key=rules.by_user, heartbeat=300.0)
    rule = rules.JWTAuth(SECRET, algorithms=["HS256"])
    return Guard(rules=[rules.ConnectRate(rate), rule, cap], storage=storage), cap


async def test_a_revocation_only_redis_holds_is_found_in_the_same_round_trip(
    redis: RedisServer, app: Held, guards: list[Guard]
) -> None:
    guard, cap = auth_guard(redis.url)
    guards.append(guard)
    middleware = WSGuardMiddleware(app, guard=guard)
    first = await admitted(middleware, bearer("bob"))  # starts the guard
    await eventually(lambda: guard.channel.subscribed, what="control channel subscribed")
    # Written by another tool after this process loaded the revocations: only
    # the handshake's EXISTS can know it.
    await guard.storage.redis().set(guard.channel.revocation_key("sub", "alice"), "1", px=60_000)
    outcome: list[tuple[int, str]] = []

    async def alice() -> None:
        outcome.append(await refused(middleware, bearer("alice")))

    assert await round_trips(redis, guard, alice()) == 1  # EVALSHA and EXISTS together
    assert outcome == [(1008, "token_revoked")]
    assert redis.zcard(redis_key(guard.namespace, "slots", cap.id, ALICE)) == 0
    assert guard.metrics.snapshot().closes_by_rule == {"token_revoked": 1}
    app.release.set()
    await first.finished()


async def test_the_shared_checks_work_on_a_cluster(app: Held, guards: list[Guard]) -> None:
    # A token with jti and sub has two revocation keys, in two slots: each is
    # its own EXISTS in the pipeline (a cluster splits a multi-key one by node).
    with redis_cluster() as uri:
        guard, cap = auth_guard(uri)
        guards.append(guard)
        middleware = WSGuardMiddleware(app, guard=guard)
        token = [(b"authorization", f"Bearer {mint('alice', jti='t1')}".encode())]
        first = await admitted(middleware, token)
        await eventually(lambda: guard.channel.subscribed, what="control channel subscribed")
        await guard.storage.redis().set(guard.channel.revocation_key("jti", "t1"), "1", px=60_000)
        assert await refused(middleware, token) == (1008, "token_revoked")
        second = await admitted(middleware, bearer("alice"))  # another token of alice's
        slots = redis_key(guard.namespace, "slots", cap.id, ALICE)
        assert await guard.storage.redis().zcard(slots) == 2
        app.release.set()
        for ws in (first, second):
            await ws.finished()
        assert await guard.storage.redis().zcard(slots) == 0
        await guard.shutdown()
        guards.clear()


def exists_calls(server: RedisServer) -> int:
    """``EXISTS`` commands the server ran so far (``INFO commandstats``)."""
    found = re.search(rb"cmdstat_exists:calls=(\d+)", server.command("INFO", "commandstats"))
    return 0 if found is None else int(found.group(1))


async def test_a_key_that_keeps_hammering_is_refused_before_its_token_is_verified(
    redis: RedisServer, app: Held, guards: list[Guard]
) -> None:
    # The first over-the-rate attempt has its token verified while ConnectRate's
    # call waits (its revocation check rides in the same round trip); after
    # that refusal, the key's attempts within the wait are refused first.
    guard, cap = auth_guard(redis.url, rate="1/minute")
    guards.append(guard)
    middleware = WSGuardMiddleware(app, guard=guard)
    first = await admitted(middleware, bearer("alice"))
    await eventually(lambda: guard.channel.subscribed, what="control channel subscribed")
    before = exists_calls(redis)
    limited = (1008, "connect_rate_limited; retry-after=60")
    assert await refused(middleware, bearer("alice")) == limited
    assert exists_calls(redis) == before + 1  # verified, checked, then refused by the rate
    for _ in range(3):
        assert await refused(middleware, bearer("alice")) == limited
    assert exists_calls(redis) == before + 1  # refused before verification
    assert redis.zcard(redis_key(guard.namespace, "slots", cap.id, ALICE)) == 1
    app.release.set()
    await first.finished()


class CountedRate(rules.ConnectRate):
    """A user's subclass that overrides ``admit`` alone: its ``admit`` must run."""

    calls = 0

    async def admit(self, conn: RuleContext) -> Close | None:
        type(self).calls += 1
        return await super().admit(conn)


async def test_a_subclass_that_overrides_admit_alone_is_not_batched(
    redis: RedisServer, app: Held, guards: list[Guard]
) -> None:
    cap = rules.MaxConnectionsPerKey(10, key=rules.by_ip, heartbeat=300.0)
    guard = Guard(rules=[CountedRate("1/minute"), cap], storage=redis.url)
    guards.append(guard)
    middleware = WSGuardMiddleware(app, guard=guard)
    first = await admitted(middleware, [])
    assert await refused(middleware, []) == (1008, "connect_rate_limited; retry-after=60")
    assert CountedRate.calls == 2
    assert redis.zcard(redis_key(guard.namespace, "slots", cap.id, "127.0.0.1")) == 1
    app.release.set()
    await first.finished()


async def test_scripts_redis_lost_are_loaded_and_sent_again(
    redis: RedisServer, app: Held, guards: list[Guard]
) -> None:
    cap = rules.MaxConnectionsPerKey(10, key=rules.by_ip, heartbeat=300.0)
    guard = Guard(rules=[rules.ConnectRate("2/minute"), cap], storage=redis.url)
    guards.append(guard)
    middleware = WSGuardMiddleware(app, guard=guard)
    first = await admitted(middleware, [])
    assert redis.command("SCRIPT", "FLUSH") == b"+OK\r\n"  # as a restarted Redis
    box: list[ScriptedWebSocket] = []

    async def second() -> None:
        box.append(await admitted(middleware, []))

    # The pipeline (both NOSCRIPT), one SCRIPT LOAD per script, the pipeline again.
    assert await round_trips(redis, guard, second()) == 4
    assert redis.zcard(redis_key(guard.namespace, "slots", cap.id, "127.0.0.1")) == 2
    # Each attempt counted once: the third is over the rate.
    assert await refused(middleware, []) == (1008, "connect_rate_limited; retry-after=60")
    assert guard.metrics.snapshot().storage_errors == 0
    app.release.set()
    for ws in (first, *box):
        await ws.finished()
