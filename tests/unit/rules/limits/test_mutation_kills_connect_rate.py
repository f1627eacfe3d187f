"""``ConnectRate`` on a real redis-server and in its per-process fallback, exact.

In process (``ScriptedWebSocket``) with a real Redis: the attempts a key
gets, the retry hint in whole seconds, the hash that holds the counters and
its expiry, and what happens while Redis is away under both storage
policies. Each test pins a behaviour that a small change to
``rules/limits/connect_rate.py`` could break without any other in-process test noticing.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.apps import echo
from tests.support.rate_helpers import Clock
from tests.support.redis_server import RedisServer
from ws_guard import ConfigurationError, Guard, WSGuardMiddleware, rules
from ws_guard._core.connection import Connection
from ws_guard.rules.limits.keying import redis_key
from ws_guard.testing import ScriptedWebSocket

IP = "10.0.0.7"


def limited(
    storage: str, rate: str = "3/minute", *, enforce: bool = True, **options: Any
) -> tuple[Any, Guard, rules.ConnectRate]:
    rule = rules.ConnectRate(rate, enforce=enforce)
    guard = Guard(rules=[rule], storage=storage, **options)
    return WSGuardMiddleware(echo, guard=guard), guard, rule


def integer(reply: bytes) -> int:
    return int(reply.strip().lstrip(b":"))


async def attempt(app: Any, ip: str = IP) -> tuple[int, str] | None:
    """One handshake: None when admitted (and closed again), else the close code and reason."""
    ws = ScriptedWebSocket(app, client=(ip, 40000))
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.send_text("hi")
    reply = await ws.next()
    if reply["type"] == "websocket.close":
        await ws.finished()
        return reply["code"], reply["reason"]
    assert reply == {"type": "websocket.send", "text": "hi"}
    await ws.disconnect()
    await ws.finished()
    return None


@pytest.mark.redis
async def test_redis_admits_the_limit_then_refuses_with_the_window_as_hint(
    redis: RedisServer,
) -> None:
    app, guard, rule = limited(redis.url)
    assert [await attempt(app) for _ in range(3)] == [None, None, None]
    # The window opened at the first attempt, milliseconds ago: 60 s rounded up.
    assert await attempt(app) == (1008, "connect_rate_limited; retry-after=60")
    assert await attempt(app, "10.0.0.8") is None  # another address counts on its own
    key = redis_key(guard.namespace, "connect", rule.id, IP)
    assert integer(redis.command("HEXISTS", key, "s")) == 1
    assert 119_000 < integer(redis.command("PTTL", key)) <= 120_000  # its last window and one more
    snap = guard.metrics.snapshot()
    assert snap.closes_by_rule == {"connect_rate_limited": 1}
    assert snap.closes_by_code == {1008: 1, 1000: 4}
    assert snap.storage_errors == 0
    await guard.shutdown()


@pytest.mark.redis
async def test_redis_shadow_rate_admits_and_reports_each_extra_attempt(
    redis: RedisServer,
) -> None:
    app, guard, _ = limited(redis.url, "2/minute", enforce=False)
    assert [await attempt(app) for _ in range(4)] == [None] * 4
    snap = guard.metrics.snapshot()
    assert snap.shadow_breaches_by_rule == {"connect_rate_limited": 2}
    assert snap.closes_by_code == {1000: 4}
    await guard.shutdown()


@pytest.mark.redis
async def test_redis_down_allow_counts_in_this_process_on_the_guard_clock(
    own_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock(500.0)
    app, guard, _ = limited(own_redis.url, clock=clock)
    assert await attempt(app) is None  # counted in Redis
    own_redis.kill()
    # The fallback starts empty: three more attempts in this process, then refused.
    assert [await attempt(app) for _ in range(3)] == [None, None, None]
    clock.now = 530.0
    assert await attempt(app) == (1008, "connect_rate_limited; retry-after=30")
    assert await attempt(app, "10.0.0.8") is None  # each address counts on its own here too
    failures = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert failures[0].startswith("ws_guard connect rate failed (ConnectionError: ")
    assert failures[0].endswith("; policy on_storage_error=allow")
    snap = guard.metrics.snapshot()
    assert snap.storage_errors == 5
    assert snap.closes_by_rule == {"connect_rate_limited": 1}
    await guard.shutdown()


@pytest.mark.redis
async def test_redis_down_deny_refuses_with_1013_and_no_hint(own_redis: RedisServer) -> None:
    app, guard, _ = limited(own_redis.url, on_storage_error="deny")
    own_redis.kill()
    assert await attempt(app) == (1013, "storage_unavailable")
    assert await attempt(app) == (1013, "storage_unavailable")
    snap = guard.metrics.snapshot()
    assert snap.storage_errors == 2
    assert snap.closes_by_code == {1013: 2}
    await guard.shutdown()


# -- in memory: configuration, ids, the sweep job --------------------------------------------
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_keys": 0}, "ConnectRate max_keys must be a positive integer, not 0"),
        (
            {"key": rules.by_user},
            "ConnectRate runs before authentication, so key=rules.by_user is not known yet; "
            "use rules.by_ip or a callable of the request",
        ),
        (
            {"key": rules.by_connection},
            "ConnectRate key=rules.by_connection gives every connection its own key, so it "
            "never limits; use rules.by_ip, rules.by_user or a callable of the connection",
        ),
        (
            {"key": 5},
            "ConnectRate key must be rules.by_connection, rules.by_ip, rules.by_user or a "
            "callable of the connection, not 5",
        ),
    ],
)
def test_misconfiguration_names_the_rule_and_the_value(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        rules.ConnectRate("3/minute", **options)
    assert str(caught.value) == message


def test_ids_repr_and_script_arguments() -> None:
    rule = rules.ConnectRate("5/second; 100/minute")
    assert rule.enforce is True
    assert rule.id == "by_ip:5/1s,100/60s"
    assert rule._args == [5, 1000, 100, 60000]  # limit and window in ms, per rate
    assert repr(rule) == ("ConnectRate('5/second; 100/minute', key=by_ip, enforce=True, name=None)")
    named = rules.ConnectRate("3/minute", name="handshakes", enforce=False)
    assert (named.id, named.name, named.enforce) == ("handshakes", "handshakes", False)
    assert named.evicted == 0  # before startup: no counters yet


async def test_the_sweep_runs_every_shortest_window_and_stops_at_shutdown() -> None:
    clock = Clock(0.0)
    rule = rules.ConnectRate("100/minute; 5/second")
    guard = Guard(rules=[rule], clock=clock)
    app = WSGuardMiddleware(echo, guard=guard)
    assert await attempt(app) is None
    jobs = list(guard.storage._jobs)
    assert [job.interval for job in jobs] == [1.0]
    counters = rule._counters
    assert counters is not None
    assert len(counters) == 1
    clock.now = 60.0  # inside the minute's window and the next: kept
    await jobs[0].run()
    assert len(counters) == 1
    clock.now = 180.0  # both windows past: the key leaves, on the guard's clock
    await jobs[0].run()
    assert len(counters) == 0
    await rule.shutdown(guard)
    assert guard.storage._jobs == []
    assert rule._counters is None
    await rule.shutdown(guard)  # a second shutdown finds nothing to remove
    await guard.shutdown()


async def test_a_named_memory_rate_closes_under_its_name_with_the_hint() -> None:
    clock = Clock(100.0)
    rule = rules.ConnectRate("2/minute", name="handshakes")
    guard = Guard(rules=[rule], clock=clock)
    app = WSGuardMiddleware(echo, guard=guard)
    assert [await attempt(app) for _ in range(2)] == [None, None]
    clock.now = 115.0
    assert await attempt(app) == (1008, "connect_rate_limited; retry-after=45")
    snap = guard.metrics.snapshot()
    assert snap.closes_by_rule == {"handshakes": 1}
    assert snap.closes_by_code == {1008: 1, 1000: 2}
    await guard.shutdown()


async def test_admission_before_startup_is_a_bug_said_plainly() -> None:
    rule = rules.ConnectRate("3/minute")
    guard = Guard(rules=[rule])

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        return None

    scope = {"type": "websocket", "path": "/ws", "client": (IP, 1), "headers": []}
    conn = Connection(guard, scope, receive, send)
    with pytest.raises(RuntimeError) as caught:
        await rule.admit(conn)
    assert str(caught.value) == "ConnectRate is used before Guard.startup()"
