"""Fault injection on real components: what ws_guard does when its parts fail.

Every test runs real uvicorn with a guarded echo app and real ``websockets``
clients that keep chatting (``Chatters``) while something breaks underneath:
a real ``redis-server`` is paused with SIGSTOP or killed and restarted, a
real JWKS endpoint answers late or goes away, a user's load gauge raises or
hangs, the ``on_close`` hook raises, the application raises mid-send. Each
test asserts the documented policy (codes, reasons, counters, log lines),
that the connections already open never noticed, and that enforcement comes
back without a restart. docs/reliability.md maps each fault to its test.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.support.apps import echo, http_ok
from tests.support.fault_tools import Chatters, Outcome, attempt, flaky_jwks, on_server, until
from tests.support.jwks_server import new_rsa_key
from tests.support.jwt_keys import SECRET, mint
from tests.support.rate_helpers import HeaderSubject
from tests.support.redis_server import RedisServer
from tests.support.servers import ServerThread, serve
from tests.support.sites import closed_by_server
from ws_guard import CloseEvent, Guard, WSGuardMiddleware, load, rules
from ws_guard._core.connection import Connection
from ws_guard._core.storage import REDIS_DEFAULTS
from ws_guard.rules.auth.key_state import KeyState
from ws_guard.rules.keys import user_key
from ws_guard.rules.limits.keying import redis_key
from ws_guard.types import Receive, Scope, Send

pytestmark = pytest.mark.e2e

#: What a message round trip on an open connection may take while a part of
#: the guard is failing: generous for a shared 2-core machine, yet far below
#: the 1 s storage timeout and the key-server timeouts the faults cost.
PROMPT = 0.5


def as_user(name: str) -> dict[str, str]:
    return {"x-user": name}


def storage_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "ws_guard" and "policy on_storage_error=" in r.getMessage()
    ]


async def no_leaks(server: ServerThread, guard: Guard) -> None:
    """Every connection finished and released what it held."""

    def clean() -> bool:
        snap = guard.metrics.snapshot()
        return (
            snap.active_connections == 0
            and not guard.live_connections
            and len(guard.scheduler) == 0
        )

    await until(lambda: on_server(server, clean), what="no open connection, no deadline")


# == Redis ===========================================================================
def user_header(conn: Connection) -> str | None:
    return conn.header("x-user")


def bulk_quota(conn: Connection) -> str | None:
    """Users other than ``steady-*`` and ``limited-*`` fall under a large shared rate."""
    subject = conn.subject
    return None if subject is None or subject.startswith(("steady", "limited")) else subject


def small_quota(conn: Connection) -> str | None:
    """Users called ``limited-*`` also fall under a small message rate."""
    subject = conn.subject
    return subject if subject is not None and subject.startswith("limited") else None


def redis_app(redis: RedisServer, policy: str, heartbeat: float = 10.0) -> tuple[Any, Guard]:
    guard = Guard(
        rules=[
            HeaderSubject(),
            rules.ConnectRate("3/minute", key=user_header),
            rules.MaxConnectionsPerKey(2, key=rules.by_user, heartbeat=heartbeat),
            rules.MessageRate("100000/minute", key=bulk_quota, name="bulk"),
            rules.MessageRate("5/minute", key=small_quota, lease=1),
        ],
        storage=redis.url,
        on_storage_error=policy,
    )
    return WSGuardMiddleware(echo, guard=guard), guard


def pause(redis: RedisServer) -> None:
    assert redis.process is not None
    redis.process.send_signal(signal.SIGSTOP)


def resume(redis: RedisServer) -> None:
    assert redis.process is not None
    redis.process.send_signal(signal.SIGCONT)


async def send_until_closed(url: str, user: str, count: int) -> tuple[int, int | None, str]:
    """Send up to *count* messages one by one; echoes received, then the close."""
    echoed = 0
    async with connect(url, additional_headers=as_user(user), open_timeout=15) as ws:
        try:
            for i in range(count):
                await ws.send(f"m{i}")
                assert await asyncio.wait_for(ws.recv(), 10) == f"m{i}"
                echoed += 1
        except ConnectionClosed:
            return echoed, ws.close_code, ws.close_reason or ""
    return echoed, None, ""


async def enforcement_is_back(url: str) -> None:
    """ConnectRate, the connection cap and a shared message rate enforce again."""
    for _ in range(3):
        assert (await attempt(url, as_user("hammer"))).opened
    refused = await attempt(url, as_user("hammer"))
    assert (refused.code, refused.reason) == (1008, "connect_rate_limited; retry-after=60")
    async with (
        connect(url, additional_headers=as_user("capped")) as one,
        connect(url, additional_headers=as_user("capped")) as two,
    ):
        for ws in (one, two):
            await ws.send("x")
            assert await asyncio.wait_for(ws.recv(), 5) == "x"
        third = await attempt(url, as_user("capped"))
        assert (third.code, third.reason) == (1008, "too_many_connections")
    echoed, code, reason = await send_until_closed(url, "limited-after", 10)
    assert (echoed, code) == (5, 1008)
    assert reason.startswith("rate_limited; retry-after=")


@pytest.mark.redis
async def test_redis_paused_under_load_fails_open_promptly_and_recovers(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    guarded, guard = redis_app(own_redis, "allow")
    timeout = REDIS_DEFAULTS["socket_timeout"]
    with serve(guarded) as server:
        url = server.url + "/ws"
        load_ = Chatters()
        for i in range(4):
            await load_.add(url, headers=as_user(f"load-{i}"))
        await until(lambda: len(load_.samples) >= 40, what="warm-up echoes")

        paused_at = time.monotonic()
        pause(own_redis)
        try:
            # More handshakes than ConnectRate (3) and the cap (2) allow, all at
            # once: both count in this process while Redis does not answer.
            # And the small rate still holds per process: 5 messages, then 1008.
            *during, limited = await asyncio.gather(
                *(attempt(url, as_user("paused")) for _ in range(4)),
                send_until_closed(url, "limited-during", 8),
            )
            fault_seen = guard.metrics.snapshot().storage_errors
        finally:
            resume(own_redis)
        resumed_at = time.monotonic()

        refused = sorted((o.code, o.reason) for o in during if not o.opened)
        assert refused == [
            (1008, "connect_rate_limited; retry-after=60"),
            (1008, "too_many_connections"),
        ], during
        # Each handshake makes at most three storage calls (ConnectRate, the cap,
        # the message window's first look), each bounded by the socket timeout.
        slowest = max(o.seconds for o in during)
        assert slowest < 3 * timeout + 1.0, during
        assert limited[:2] == (5, 1008)
        assert limited[2].startswith("rate_limited; retry-after=")
        # Open connections never waited for storage.
        load_.assert_prompt(paused_at, resumed_at, PROMPT, at_least=21)
        # Counted on every failure, logged at most once per interval (5 s).
        warnings = storage_warnings(caplog)
        assert fault_seen >= 4 + 3 + 2 + 3  # refused handshakes made fewer calls
        assert 1 <= len(warnings) <= 1 + (resumed_at - paused_at) // 5.0, warnings
        assert all("policy on_storage_error=allow" in w for w in warnings)

        await enforcement_is_back(url)
        snap = guard.metrics.snapshot()
        assert dict(snap.closes_by_rule) == {
            "rate_limited": 2,
            "connect_rate_limited": 2,
            "too_many_connections": 2,
        }
        assert 1013 not in snap.closes_by_code
        await load_.stop()
        await no_leaks(server, guard)


@pytest.mark.redis
async def test_redis_paused_with_deny_refuses_1013_and_recovers(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    guarded, guard = redis_app(own_redis, "deny")
    timeout = REDIS_DEFAULTS["socket_timeout"]
    with serve(guarded) as server:
        url = server.url + "/ws"
        load_ = Chatters()  # steady-*: under no shared message rate
        for i in range(3):
            await load_.add(url, headers=as_user(f"steady-{i}"))
        limited = await connect(url, additional_headers=as_user("limited-open"))
        await limited.send("before")
        assert await asyncio.wait_for(limited.recv(), 5) == "before"
        await until(lambda: len(load_.samples) >= 30, what="warm-up echoes")

        paused_at = time.monotonic()
        pause(own_redis)
        try:
            # A message never waits for storage: this one is admitted on debt
            # while its lease request hangs...
            await limited.send("during")
            assert await asyncio.wait_for(limited.recv(), 5) == "during"
            await until(
                lambda: guard.metrics.snapshot().storage_errors >= 1,
                timeout=3 * timeout + 1,
                what="the lease request to fail",
            )
            # ...and once it failed, the next message closes the connection.
            await limited.send("after the failure")
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(limited.recv(), 5)
            refused = await asyncio.gather(*(attempt(url, as_user(f"new-{i}")) for i in range(3)))
        finally:
            resume(own_redis)
        resumed_at = time.monotonic()

        assert (limited.close_code, limited.close_reason) == (1013, "storage_unavailable")
        for outcome in refused:
            assert (outcome.code, outcome.reason) == (1013, "storage_unavailable")
            # ConnectRate is the first storage call: refused within its timeout.
            assert outcome.seconds < timeout + 1.0, outcome
        load_.assert_prompt(paused_at, resumed_at, PROMPT, at_least=21)
        warnings = storage_warnings(caplog)
        assert len(warnings) == 1, warnings
        assert "policy on_storage_error=deny" in warnings[0]

        assert (await attempt(url, as_user("back"))).opened  # no restart needed
        await enforcement_is_back(url)
        snap = guard.metrics.snapshot()
        assert snap.closes_by_code[1013] == 4
        assert snap.closes_by_rule["storage_unavailable"] == 4
        await load_.stop()
        await no_leaks(server, guard)


@pytest.mark.redis
async def test_redis_killed_and_restarted_under_load(own_redis: RedisServer) -> None:
    guarded, guard = redis_app(own_redis, "allow", heartbeat=0.3)
    with serve(guarded) as server:
        url = server.url + "/ws"
        load_ = Chatters()
        for i in range(3):
            await load_.add(url, headers=as_user(f"load-{i}"))
        await load_.add(url, count=2, headers=as_user("carol"))  # carol is at her cap
        await until(lambda: len(load_.samples) >= 40, what="warm-up echoes")

        killed_at = time.monotonic()
        own_redis.kill()
        during = await asyncio.gather(*(attempt(url, as_user(f"outage-{i}")) for i in range(4)))
        # A refused TCP connect fails at once: the outage costs no waiting.
        assert all(o.opened and o.seconds < PROMPT for o in during), during
        # Each of the four shared windows (load-0..2, carol) fails a lease, waits
        # out its one-second retry pause, and fails again: every failure counted.
        errors = guard.metrics.snapshot().storage_errors
        await until(
            lambda: guard.metrics.snapshot().storage_errors >= errors + 2 * 4,
            what="two rounds of lease failures while Redis is down",
        )
        own_redis.start()  # the same port, no data: like a crashed cache
        restarted_at = time.monotonic()

        load_.assert_prompt(killed_at, restarted_at, PROMPT, at_least=21)
        # The heartbeat writes back the slots this process holds...
        slots = redis_key(guard.namespace, "slots", "by_user:2", user_key(None, "carol"))
        await until(lambda: own_redis.command("ZCARD", slots).strip() == b":2", what="slots back")
        refused = await attempt(url, as_user("carol"))  # ...so carol's cap holds again
        assert (refused.code, refused.reason) == (1008, "too_many_connections")
        # The chatters' message windows lease from Redis again, no restart.
        counter = redis_key(guard.namespace, "msg", "bulk", "load-0", 0)
        await until(lambda: own_redis.command("EXISTS", counter).strip() == b":1", what="leases")
        await enforcement_is_back(url)
        await load_.stop()
        await no_leaks(server, guard)


# == JWKS ============================================================================
KEY_A = new_rsa_key()
KEY_B = new_rsa_key()
FETCH_TIMEOUT = 0.5


def rs(key: Any, kid: str, sub: str) -> str:
    return mint(sub, key=key, alg="RS256", headers={"kid": kid})


def jwks_app(url: str, policy: str, **options: Any) -> tuple[Any, Guard, rules.JWKS]:
    source = rules.JWKS(url, timeout=FETCH_TIMEOUT, cooldown=0, **options)
    auth = rules.JWTAuth(algorithms=["RS256"], jwks_url=source, token=rules.from_query("token"))
    guard = Guard(rules=[auth], on_storage_error=policy)
    return WSGuardMiddleware(echo, guard=guard), guard, source


def jwks_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [m for m in storage_warnings(caplog) if "jwks fetch failed" in m]


POLICIES = [
    pytest.param("allow", 1008, "token_invalid", id="allow"),
    pytest.param("deny", 1013, "storage_unavailable", id="deny"),
]


@pytest.mark.parametrize(("policy", "code", "reason"), POLICIES)
async def test_slow_jwks_costs_its_timeout_never_the_loop(
    policy: str, code: int, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    with flaky_jwks(a=KEY_A) as endpoint:
        guarded, guard, _ = jwks_app(endpoint.url, policy, retry=0.3)
        with serve(guarded) as server:
            url = server.url + "/ws?token="
            assert endpoint.hits == 1  # fetched at lifespan startup
            load_ = Chatters()
            for i in range(3):
                await load_.add(url + rs(KEY_A, "a", f"load-{i}"))
            await until(lambda: len(load_.samples) >= 30, what="warm-up echoes")

            endpoint.publish(a=KEY_A, b=KEY_B)  # a rotation is under way...
            endpoint.delay = 4 * FETCH_TIMEOUT  # ...and the endpoint answers too late
            slow_at = time.monotonic()
            known, *unknown = await asyncio.gather(
                attempt(url + rs(KEY_A, "a", "known")),
                *(attempt(url + rs(KEY_B, "b", f"new-{i}")) for i in range(3)),
            )
            slow_end = time.monotonic()

            assert known.opened  # a cached key needs no fetch
            assert known.seconds < PROMPT
            for outcome in unknown:
                assert (outcome.code, outcome.reason) == (code, reason)
                assert outcome.seconds < FETCH_TIMEOUT + 1.0, outcome
            assert endpoint.hits == 2  # the three handshakes shared one fetch
            # The fetch ran in a thread, off the event loop: no echo waited for it.
            load_.assert_prompt(slow_at, slow_end, PROMPT, at_least=11)
            assert guard.metrics.snapshot().storage_errors == 1
            assert len(jwks_warnings(caplog)) == 1

            endpoint.delay = 0.0  # back to normal: the next fetch after `retry` succeeds

            async def key_b_works() -> bool:
                return (await attempt(url + rs(KEY_B, "b", "later"))).opened

            await until(key_b_works, what="the rotated key to verify")
            await load_.stop()
            await no_leaks(server, guard)


@pytest.mark.parametrize(("policy", "code", "reason"), POLICIES)
async def test_jwks_down_under_load_follows_the_policy_and_recovers(
    policy: str, code: int, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    with flaky_jwks(a=KEY_A) as endpoint:
        guarded, guard, source = jwks_app(endpoint.url, policy, lifespan=0.5, retry=0.2)
        with serve(guarded) as server:
            url = server.url + "/ws?token="
            load_ = Chatters()
            for i in range(3):
                await load_.add(url + rs(KEY_A, "a", f"load-{i}"))
            endpoint.stop()
            down_at = time.monotonic()
            await until(
                lambda: on_server(server, lambda: source.cached("a") is KeyState.FETCH),
                what="the key set to go stale",
            )
            stale = await attempt(url + rs(KEY_A, "a", "stale"))
            unknown = await attempt(url + rs(KEY_B, "b", "unknown"))
            down_end = time.monotonic()

            if policy == "allow":  # stale-if-error: the last good keys still verify
                assert stale.opened
            else:
                assert (stale.code, stale.reason) == (code, reason)
            assert (unknown.code, unknown.reason) == (code, reason)
            assert max(stale.seconds, unknown.seconds) < PROMPT  # refused connect: no wait
            load_.assert_prompt(down_at, down_end, PROMPT)
            assert guard.metrics.snapshot().storage_errors >= 1
            assert len(jwks_warnings(caplog)) == 1

            endpoint.publish(a=KEY_A, b=KEY_B)
            endpoint.start()  # the same URL answers again

            async def key_b_works() -> bool:
                return (await attempt(url + rs(KEY_B, "b", "later"))).opened

            await until(key_b_works, what="keys after the outage")
            await load_.stop()
            await no_leaks(server, guard)


# == load gauges and the close hook ===================================================
OVERLOADED = re.compile(r"overloaded; retry-after=\d+(?:\.\d)?")


def gauge_warnings(caplog: pytest.LogCaptureFixture, name: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "ws_guard" and f"gauge {name} could not read" in r.getMessage()
    ]


def assert_shed(outcome: Outcome) -> None:
    assert outcome.code == 1013, outcome
    assert OVERLOADED.fullmatch(outcome.reason), outcome


async def test_a_gauge_whose_read_raises_keeps_its_last_value(
    caplog: pytest.LogCaptureFixture,
) -> None:
    state: dict[str, Any] = {"value": 0.0, "fail": False}

    def read() -> float:
        if state["fail"]:
            raise RuntimeError("queue backend down")
        return float(state["value"])

    gauge = load.Gauge(read, 10, name="queue", interval=0.05)
    guard = Guard(load=[gauge])
    with serve(WSGuardMiddleware(echo, guard=guard)) as server:
        url = server.url + "/ws"
        load_ = Chatters()
        await load_.add(url, count=3)
        started = time.monotonic()

        state["fail"] = True  # below the limit when it broke: handshakes are admitted
        await until(lambda: gauge.read_errors >= 3, what="failed background reads")
        assert (await attempt(url)).opened
        state.update(fail=False, value=20.0)
        await until(gauge.tripped, what="the gauge to trip")
        assert_shed(await attempt(url))
        state["fail"] = True  # above the limit when it broke: handshakes are shed
        errors = gauge.read_errors
        assert_shed(await attempt(url))
        assert gauge.read_errors > errors
        assert gauge.value() == 20.0
        state.update(fail=False, value=0.0)
        await until(lambda: not gauge.tripped(), what="the gauge to clear")
        assert (await attempt(url)).opened

        # Shedding refuses handshakes only: the open connections kept echoing.
        load_.assert_prompt(started, time.monotonic(), PROMPT)
        await load_.stop()
        await no_leaks(server, guard)
    snap = guard.metrics.snapshot()
    assert dict(snap.closes_by_rule) == {"overloaded": 2}
    reading = snap.gauge("queue")
    assert reading is not None
    assert reading.sheds == 2
    # Counted on every failed read, logged at most every 30 s.
    warnings = gauge_warnings(caplog, "queue")
    assert warnings == [
        "ws_guard gauge queue could not read (RuntimeError: queue backend down); "
        "keeping the last value 0.0"
    ]


async def test_an_async_gauge_that_hangs_times_out_and_keeps_its_last_value(
    caplog: pytest.LogCaptureFixture,
) -> None:
    state: dict[str, Any] = {"value": 0.0, "hang": False}

    async def read() -> float:
        if state["hang"]:
            await asyncio.sleep(3600)  # a downstream that never answers
        return float(state["value"])

    gauge = load.Gauge(read, 10, name="downstream", interval=0.05, timeout=0.1)
    guard = Guard(load=[gauge])
    with serve(WSGuardMiddleware(echo, guard=guard)) as server:
        url = server.url + "/ws"
        load_ = Chatters()
        await load_.add(url, count=3)
        started = time.monotonic()

        def tasks() -> int:
            return len(asyncio.all_tasks())

        before = await on_server(server, tasks)
        state["value"] = 20.0
        await until(gauge.tripped, what="the gauge to trip")
        assert_shed(await attempt(url))  # between samples the last one stands
        state["hang"] = True
        await until(lambda: gauge.read_errors >= 5, what="timed-out reads")
        shed = await attempt(url)
        assert_shed(shed)
        assert shed.seconds < PROMPT  # the handshake reads the cached state, never waits
        assert gauge.value() == 20.0
        # Each timed-out read was cancelled: no task piles up behind a hung read.
        assert await on_server(server, tasks) <= before
        state.update(hang=False, value=0.0)
        await until(lambda: not gauge.tripped(), what="the gauge to clear")
        assert (await attempt(url)).opened

        load_.assert_prompt(started, time.monotonic(), PROMPT)
        await load_.stop()
        await no_leaks(server, guard)
    warnings = gauge_warnings(caplog, "downstream")
    assert len(warnings) == 1, warnings
    assert "TimeoutError" in warnings[0]


async def test_a_close_hook_that_raises_on_every_close_breaks_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    events: list[CloseEvent] = []

    def hook(event: CloseEvent) -> None:
        events.append(event)
        raise RuntimeError("audit sink down")

    guard = Guard(
        rules=[rules.MaxMessageSize(16)], load=[load.ConnectionCount(limit=25)], on_close=hook
    )
    with serve(WSGuardMiddleware(echo, guard=guard)) as server:
        url = server.url + "/ws"
        load_ = Chatters()
        await load_.add(url, count=3)
        started = time.monotonic()

        async def too_big() -> tuple[int | None, str]:
            async with connect(url, open_timeout=10) as ws:
                await ws.send("x" * 17)
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 10)
                return ws.close_code, ws.close_reason or ""

        normal = [attempt(url) for _ in range(10)]
        oversize = [too_big() for _ in range(10)]
        results = await asyncio.gather(*normal, *oversize)
        assert all(isinstance(r, Outcome) and r.opened for r in results[:10])
        assert results[10:] == [(1009, "message_too_big")] * 10
        await until(lambda: guard.metrics.snapshot().active_connections == 3, what="finished")
        # Fill the gauge: the 26th connection is shed, the hook raising again.
        held = [await connect(url, open_timeout=10) for _ in range(22)]
        assert_shed(await attempt(url))
        for ws in held:
            await ws.close()
        load_.assert_prompt(started, time.monotonic(), PROMPT)
        await load_.stop()
        await no_leaks(server, guard)

    snap = guard.metrics.snapshot()
    assert dict(snap.closes_by_code) == {1000: 10 + 22 + 3, 1009: 10, 1013: 1}
    assert len(events) == 46  # the hook saw every close...
    failures = [r for r in caplog.records if "on_close hook raised" in r.getMessage()]
    assert len(failures) == 46  # ...and each failure was logged with its traceback
    assert all(r.exc_info is not None and r.exc_info[0] is RuntimeError for r in failures)


# == the application raising mid-send =================================================
def unserialisable() -> str:
    return json.dumps({"when": object()})  # TypeError: not JSON serialisable


async def crashes_while_building_a_send(scope: Scope, receive: Receive, send: Send) -> None:
    """Echoes; on "boom" the message it is about to send cannot be built."""
    if scope["type"] != "websocket":
        await http_ok(scope, receive, send)
        return
    await receive()
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        await send({"type": "websocket.send", "text": unserialisable() if text == "boom" else text})


async def crashes_while_a_task_sends(scope: Scope, receive: Receive, send: Send) -> None:
    """A ticker task streams frames while the reader raises on "boom"."""
    if scope["type"] != "websocket":
        await http_ok(scope, receive, send)
        return
    await receive()
    await send({"type": "websocket.accept"})

    async def ticker() -> None:
        i = 0
        while True:
            await send({"type": "websocket.send", "text": f"tick{i}"})
            i += 1
            await asyncio.sleep(0.005)

    async def reader() -> None:
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") == "boom":
                raise RuntimeError("handler bug while the ticker sends")

    ticking = asyncio.ensure_future(ticker())
    try:
        await reader()
    finally:  # the bug lands while the ticker streams; it is cancelled mid-send
        ticking.cancel()
        await asyncio.gather(ticking, return_exceptions=True)


async def boom(url: str) -> tuple[int | None, str]:
    """Send "boom" and read (ticks, echoes) until the close."""
    async with connect(url, open_timeout=10) as ws:
        await ws.send("warm")
        await asyncio.wait_for(ws.recv(), 5)
        await ws.send("boom")
        await closed_by_server(ws, timeout=10)
        return ws.close_code, ws.close_reason or ""


@pytest.mark.parametrize(
    "app", [crashes_while_building_a_send, crashes_while_a_task_sends], ids=["build", "task"]
)
async def test_the_app_raising_mid_send_closes_1011_and_leaks_nothing(app: Any) -> None:
    auth = rules.JWTAuth(SECRET, algorithms=["HS256"], token=rules.from_query("token"))
    cap = rules.MaxConnectionsPerKey(50, key=rules.by_user)
    guard = Guard(rules=[auth, cap])
    with serve(WSGuardMiddleware(app, guard=guard)) as server:
        url = f"{server.url}/ws?token={mint('alice', exp_in=300)}"
        # Every connection holds an expiry deadline and a slot while it runs.
        steady = [await connect(url, open_timeout=10) for _ in range(3)]
        assert await on_server(server, lambda: len(guard.scheduler)) == 3
        crashed = await asyncio.gather(*(boom(url) for _ in range(10)))
        assert crashed == [(1011, "internal_error")] * 10
        assert await on_server(server, lambda: cap.count(user_key(None, "alice"))) == 3
        for ws in steady:  # the others never noticed: an echo (or a tick) still comes
            await ws.send("still there")
            reply = await asyncio.wait_for(ws.recv(), 5)
            assert reply == "still there" or str(reply).startswith("tick"), reply
            await ws.close()
        await no_leaks(server, guard)
        assert await on_server(server, lambda: cap.count(user_key(None, "alice"))) == 0
    snap = guard.metrics.snapshot()
    assert dict(snap.closes_by_rule) == {"internal_error": 10}
    assert snap.closes_by_code[1011] == 10
    assert snap.closes_by_initiator["app"] == 10


# == a handler that never receives ====================================================
class Streamer:
    """Streams ticks; with ``reader``, a receive() loop ends the handler at the disconnect.

    Without it the handler never calls receive() and only learns of a close
    through a send. ``stop`` ends it from outside, so the server can exit.
    """

    def __init__(self, *, reader: bool) -> None:
        self.reader = reader
        self.stop = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await http_ok(scope, receive, send)
            return
        await receive()
        await send({"type": "websocket.accept"})
        ticking = asyncio.ensure_future(self._ticks(send))
        try:
            if self.reader:
                while (await receive())["type"] != "websocket.disconnect":
                    pass
            else:
                await ticking
        finally:
            ticking.cancel()
            await asyncio.gather(ticking, return_exceptions=True)

    async def _ticks(self, send: Send) -> None:
        while not self.stop:
            await send({"type": "websocket.send", "text": "tick"})
            await asyncio.sleep(0.01)


RESTARTING = re.compile(r"restarting; retry-after=\d+(?:\.\d)?")


async def open_after_drain(app: Streamer, **guard_options: Any) -> tuple[Guard, int]:
    """Open two streams, drain the guard, and count the connections still open after it.

    The count is polled for up to 5 s, so a handler that ends a moment after
    the drain counts as ended.
    """
    guard = Guard(**guard_options)
    with serve(WSGuardMiddleware(app, guard=guard)) as server:
        clients = [await connect(server.url + "/ws", open_timeout=10) for _ in range(2)]
        for ws in clients:
            await asyncio.wait_for(ws.recv(), 5)
        assert server.loop is not None
        drain = asyncio.run_coroutine_threadsafe(guard.drain(0.0, grace=0.5), server.loop)
        for ws in clients:
            await closed_by_server(ws)
            assert ws.close_code == 1012
            assert RESTARTING.fullmatch(ws.close_reason or "")
        await asyncio.wrap_future(drain)  # returns after the grace at the latest
        deadline = time.monotonic() + 5
        while (left := await on_server(server, lambda: len(guard.live_connections))) and (
            time.monotonic() < deadline
        ):
            await asyncio.sleep(0.02)
        app.stop = True  # whatever happened, let the server exit
    return guard, left


async def test_a_handler_with_a_receive_loop_ends_after_a_drain() -> None:
    guard, left = await open_after_drain(Streamer(reader=True))
    assert left == 0
    snap = guard.metrics.snapshot()
    assert dict(snap.closes_by_code) == {1012: 2}
    assert snap.active_connections == 0


async def test_a_push_only_handler_is_cancelled_after_app_exit_timeout() -> None:
    """A handler that never calls receive() cannot see the close: ws_guard cancels it."""
    app = Streamer(reader=False)
    started = time.monotonic()
    guard, left = await open_after_drain(app, app_exit_timeout=0.3)
    assert left == 0
    assert time.monotonic() - started < 5
    snap = guard.metrics.snapshot()
    assert dict(snap.closes_by_code) == {1012: 2}
    assert snap.active_connections == 0
    assert snap.dropped_sends > 0  # its ticks after the close went nowhere
