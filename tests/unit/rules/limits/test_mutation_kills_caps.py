"""``MaxConnectionsPerKey`` on a real redis-server, in process, with exact counts.

The slots live in a sorted set per key (``ws:slots:<rule id>:<key>``) scored
by expiry in Redis milliseconds; these tests read that set with raw Redis
commands after each step: the slots taken, given back, refreshed by the
heartbeat and written back after an outage. Each test pins a behaviour
that a small change to ``rules/limits/connection_cap.py`` could break without any e2e test
telling which line did it. Connections are in process
(``ScriptedWebSocket``); only Redis is a real server.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.apps import echo
from tests.support.rate_helpers import HeaderSubject, user
from tests.support.redis_server import RedisServer
from ws_guard import ConfigurationError, Guard, WSGuardMiddleware, rules
from ws_guard.rules.keys import user_key
from ws_guard.rules.limits.keying import redis_key
from ws_guard.testing import ScriptedWebSocket

ALICE = user_key(None, "alice")


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


@pytest.mark.redis
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
    assert cap._late == []  # no write was in flight: nothing kept for later removal
    assert [job.interval for job in guard.storage._jobs] == [60.0]  # the heartbeat
    snap = guard.metrics.snapshot()
    assert snap.closes_by_rule == {"too_many_connections": 1}
    assert snap.closes_by_code == {1008: 1, 1000: 4}
    assert snap.storage_errors == 0
    await guard.shutdown()


@pytest.mark.redis
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


@pytest.mark.redis
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


@pytest.mark.redis
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


@pytest.mark.redis
async def test_shutdown_gives_back_slots_still_held(redis: RedisServer) -> None:
    app, guard, cap = capped(redis)
    a = await opened(app, "alice")
    key = slots_key(guard, cap, "alice")
    # The rule shuts down while a slot is still held (the guard's drain
    # would have closed the connection first): the slot goes at once.
    await cap.shutdown(guard)
    assert guard.storage._jobs == []
    assert integer(redis.command("EXISTS", key)) == 0
    assert cap.count(ALICE) == 0
    await leave(a)  # the release after shutdown finds nothing to give back
    assert integer(redis.command("EXISTS", key)) == 0
    assert guard.metrics.snapshot().storage_errors == 0
    await guard.shutdown()


@pytest.mark.redis
async def test_while_redis_is_down_the_cap_holds_per_process_then_writes_back(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    app, guard, cap = capped(own_redis, 2)
    a = await opened(app, "alice")
    key = slots_key(guard, cap, "alice")
    own_redis.kill()
    b = await opened(app, "alice")  # one slot held here, room for one more
    await refused(app, "alice", 1008, "too_many_connections")
    assert cap.count(ALICE) == 2
    assert guard.metrics.snapshot().storage_errors == 2
    failures = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert failures[0].startswith("ws_guard connection cap failed (ConnectionError: ")
    own_redis.start()  # empty, as after a crash
    c = await opened(app, "bob")  # bob had nothing pending: only his own slot is written
    assert members(own_redis, slots_key(guard, cap, "bob")) == {c.scope["ws_guard"].id}
    # alice's next handshake writes back both slots held here before counting.
    await refused(app, "alice", 1008, "too_many_connections")
    assert members(own_redis, key) == {a.scope["ws_guard"].id, b.scope["ws_guard"].id}
    assert cap._pending == {}  # Redis knows them now
    assert cap._writes == 0
    await leave(b)
    d = await opened(app, "alice")
    assert members(own_redis, key) == {a.scope["ws_guard"].id, d.scope["ws_guard"].id}
    await leave(a, c, d)
    assert integer(own_redis.command("EXISTS", key)) == 0
    snap = guard.metrics.snapshot()
    assert snap.closes_by_rule == {"too_many_connections": 2}
    assert snap.storage_errors == 2
    await guard.shutdown()


@pytest.mark.redis
async def test_while_redis_is_down_deny_refuses_with_1013(own_redis: RedisServer) -> None:
    app, guard, cap = capped(own_redis, 2, on_storage_error="deny")
    own_redis.kill()
    await refused(app, "alice", 1013, "storage_unavailable")
    assert cap.count(ALICE) == 0
    snap = guard.metrics.snapshot()
    assert snap.closes_by_code == {1013: 1}
    assert snap.storage_errors == 1
    await guard.shutdown()


# -- in memory: names, ids and messages ----------------------------------------------------
def test_defaults_id_and_repr() -> None:
    cap = rules.MaxConnectionsPerKey(3, key=rules.by_user)
    assert (cap.heartbeat, cap.slot_ttl) == (10.0, 30.0)
    assert cap.id == "by_user:3"
    assert repr(cap) == "MaxConnectionsPerKey(3, key=by_user, enforce=True, name=None)"
    named = rules.MaxConnectionsPerKey(3, name="per_user")
    assert named.id == "per_user"
    assert repr(named) == "MaxConnectionsPerKey(3, key=by_ip, enforce=True, name='per_user')"


def test_a_bad_limit_is_named_in_the_message() -> None:
    with pytest.raises(ConfigurationError) as caught:
        rules.MaxConnectionsPerKey(0)
    assert str(caught.value) == "MaxConnectionsPerKey limit must be a positive integer, not 0"


def test_by_user_without_an_auth_rule_names_the_rule() -> None:
    cap = rules.MaxConnectionsPerKey(2, key=rules.by_user)
    with pytest.raises(ConfigurationError) as caught:
        Guard(rules=[cap])
    assert str(caught.value) == (
        "MaxConnectionsPerKey(2, key=by_user, enforce=True, name=None) uses key=rules.by_user, "
        "which needs a rule that verifies the user (rules.JWTAuth) in the same Guard"
    )


async def test_a_named_cap_closes_under_its_name_in_memory() -> None:
    cap = rules.MaxConnectionsPerKey(1, key=rules.by_user, name="one_each")
    guard = Guard(rules=[HeaderSubject(), cap])
    app = WSGuardMiddleware(echo, guard=guard)
    a = await opened(app, "alice")
    await refused(app, "alice", 1008, "too_many_connections")
    assert cap.count(ALICE) == 1
    await leave(a)
    assert cap.count(ALICE) == 0
    assert guard.metrics.snapshot().closes_by_rule == {"one_each": 1}
    await guard.shutdown()


def test_redis_keys_need_the_guard() -> None:
    cap = rules.MaxConnectionsPerKey(2)
    with pytest.raises(RuntimeError) as caught:
        cap._rkey("k")
    assert str(caught.value) == "MaxConnectionsPerKey is not part of a Guard"


# -- Redis failing at each step: logged by name, counted, nothing raised ------------------
def failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The storage-failure log lines, cut before the error text (which names the port)."""
    lines = [r.getMessage() for r in caplog.records if " failed (" in r.getMessage()]
    return [line.split(":")[0] for line in lines]


@pytest.mark.redis
async def test_each_failed_call_is_logged_under_its_own_name(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    app, guard, cap = capped(own_redis, 2)
    guard.storage_error_log_interval = 0.0  # every failure logged, to read each name
    a = await opened(app, "alice")
    b = await opened(app, "alice")
    own_redis.kill()
    await guard.storage._jobs[0].run()  # the heartbeat, as the maintenance task runs it
    assert cap._writes == 0
    await leave(a)  # its slot stays in Redis until it expires
    assert cap.count(ALICE) == 1
    await cap.shutdown(guard)  # b's slot cannot be freed now either
    assert cap.count(ALICE) == 0
    assert failures(caplog) == [
        "ws_guard connection cap heartbeat failed (ConnectionError",
        "ws_guard connection cap release failed (ConnectionError",
        "ws_guard connection cap release failed (ConnectionError",
    ]
    assert guard.metrics.snapshot().storage_errors == 3
    await leave(b)
    await guard.shutdown()


@pytest.mark.redis
async def test_an_outage_slot_released_during_the_outage_leaves_nothing_pending(
    own_redis: RedisServer,
) -> None:
    app, guard, cap = capped(own_redis, 2)
    a = await opened(app, "alice")
    own_redis.kill()
    b = await opened(app, "alice")
    assert cap._pending == {ALICE: {b.scope["ws_guard"].id}}
    await leave(b)
    assert cap._pending == {}
    assert cap.count(ALICE) == 1
    own_redis.start()
    c = await opened(app, "alice")  # nothing pending: only c's own slot is written
    key = slots_key(guard, cap, "alice")
    assert members(own_redis, key) == {c.scope["ws_guard"].id}
    await leave(a, c)
    await guard.shutdown()


@pytest.mark.redis
async def test_the_heartbeat_writes_back_pending_slots_and_clears_them(
    own_redis: RedisServer,
) -> None:
    app, guard, cap = capped(own_redis, 3)
    a = await opened(app, "alice")
    own_redis.kill()
    b = await opened(app, "alice")
    c = await opened(app, "bob")
    own_redis.start()
    await guard.storage._jobs[0].run()
    assert cap._pending == {}
    assert cap._writes == 0
    ids = {ws.scope["ws_guard"].id for ws in (a, b)}
    assert members(own_redis, slots_key(guard, cap, "alice")) == ids
    assert members(own_redis, slots_key(guard, cap, "bob")) == {c.scope["ws_guard"].id}
    await leave(a, b, c)
    await guard.shutdown()


@pytest.mark.redis
async def test_a_slot_taken_by_a_late_script_is_removed_once_redis_answers(
    own_redis: RedisServer,
) -> None:
    app, guard, cap = capped(own_redis, 1)
    a = await opened(app, "alice")
    own_redis.kill()
    await refused(app, "alice", 1008, "too_many_connections")  # the cap holds here
    [(rkey, late_id)] = cap._late
    own_redis.start()
    # The refused handshake's script ran after all (it had timed out, not failed).
    own_redis.command("ZADD", rkey, str(redis_ms(own_redis) + 60_000), late_id)
    b = await opened(app, "bob")  # the next write removes it
    assert cap._late == []
    assert late_id not in members(own_redis, rkey)
    await leave(a, b)
    await guard.shutdown()


@pytest.mark.redis
async def test_the_heartbeat_removes_late_slots_and_the_late_list_is_bounded(
    own_redis: RedisServer,
) -> None:
    app, guard, cap = capped(own_redis, 1)
    a = await opened(app, "alice")
    own_redis.kill()
    await refused(app, "alice", 1008, "too_many_connections")
    [(rkey, late_id)] = cap._late
    cap._late = [*cap._late, *[("filler", "x")] * 9_999]
    await refused(app, "alice", 1008, "too_many_connections")  # 10 000 kept: no more
    assert len(cap._late) == 10_000
    cap._late = cap._late[:1]
    own_redis.start()
    own_redis.command("ZADD", rkey, str(redis_ms(own_redis) + 60_000), late_id)
    await guard.storage._jobs[0].run()  # the heartbeat, then the late removal
    assert cap._late == []
    assert members(own_redis, rkey) == {a.scope["ws_guard"].id}
    await leave(a)
    await guard.shutdown()


@pytest.mark.redis
async def test_a_refusal_at_the_limit_never_takes_a_slot_even_for_a_moment(
    redis: RedisServer,
) -> None:
    """Counted from the on_close hook, which runs before the refused handshake releases."""
    seen: list[int] = []
    cap = rules.MaxConnectionsPerKey(1, key=rules.by_user, heartbeat=60.0)
    guard = Guard(
        rules=[HeaderSubject(), cap],
        storage=redis.url,
        on_close=lambda event: seen.append(
            integer(redis.command("ZCARD", slots_key(guard, cap, "alice")))
        ),
    )
    app = WSGuardMiddleware(echo, guard=guard)
    a = await opened(app, "alice")
    await refused(app, "alice", 1008, "too_many_connections")
    assert seen == [1]
    await leave(a)
    await guard.shutdown()


@pytest.mark.redis
async def test_shadow_cap_during_an_outage_reports_the_extra_connection(
    own_redis: RedisServer,
) -> None:
    app, guard, cap = capped(own_redis, 1, enforce=False)
    a = await opened(app, "alice")
    own_redis.kill()
    b = await opened(app, "alice")  # over the cap in this process: admitted, reported
    snap = guard.metrics.snapshot()
    assert snap.shadow_breaches_by_rule == {"too_many_connections": 1}
    assert cap.count(ALICE) == 2
    await leave(a, b)
    await guard.shutdown()


@pytest.mark.redis
async def test_a_guard_started_again_holds_the_cap_through_an_outage(
    own_redis: RedisServer,
) -> None:
    app, guard, cap = capped(own_redis, 2)
    a = await opened(app, "alice")
    await leave(a)
    await guard.shutdown()
    b = await opened(app, "alice")  # the guard starts again on first use
    own_redis.kill()
    c = await opened(app, "alice")
    assert cap._pending == {ALICE: {c.scope["ws_guard"].id}}
    await refused(app, "alice", 1008, "too_many_connections")
    await leave(b, c)
    await guard.shutdown()


@pytest.mark.redis
async def test_held_slots_are_not_written_back_without_an_outage(redis: RedisServer) -> None:
    app, guard, cap = capped(redis, 3)
    a = await opened(app, "alice")
    redis.command("FLUSHALL")  # Redis lost the slot without this process seeing an error
    b = await opened(app, "alice")
    assert members(redis, slots_key(guard, cap, "alice")) == {b.scope["ws_guard"].id}
    assert cap.count(ALICE) == 2
    await leave(a, b)
    await guard.shutdown()


@pytest.mark.redis
async def test_a_release_during_a_write_is_kept_for_removal_within_the_bound(
    redis: RedisServer,
) -> None:
    app, guard, cap = capped(redis, 3)
    a = await opened(app, "alice")
    b = await opened(app, "alice")
    key = slots_key(guard, cap, "alice")
    cap._writes = 1  # a heartbeat's pipeline in flight could write a's slot back
    await leave(a)
    assert cap._late == [(key, a.scope["ws_guard"].id)]
    cap._late = [("filler", "x")] * 9_999
    await leave(b)  # the 10 000th entry still fits
    assert len(cap._late) == 10_000
    c = await opened(app, "alice")
    cap._late = [("filler", "x")] * 10_000
    await leave(c)  # past the bound: left to expire by TTL
    assert len(cap._late) == 10_000
    cap._writes = 0
    cap._late = []
    await guard.shutdown()


async def test_a_refused_handshake_releases_nothing_and_logs_no_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cap = rules.MaxConnectionsPerKey(1, key=rules.by_user)
    guard = Guard(rules=[HeaderSubject(), cap])
    app = WSGuardMiddleware(echo, guard=guard)
    a = await opened(app, "alice")
    await refused(app, "alice", 1008, "too_many_connections")
    assert [r for r in caplog.records if r.levelname == "ERROR"] == []
    assert cap.count(ALICE) == 1
    await leave(a)
    await guard.shutdown()
