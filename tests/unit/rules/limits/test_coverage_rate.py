"""``MessageRate`` keyed by user when a connection has no user: its messages are not counted.

``rules.by_user`` gives no key until the auth rule names a subject (with an
in-band token, only after the first message). Such a connection's messages
are not counted against anyone, with one rate or several, in memory or on
Redis (where admission does not look up a window for it). The users'
connections are limited as usual. In process; a real ``redis-server``.
"""

from __future__ import annotations

import pytest

from tests.support.apps import echo
from tests.support.rate_helpers import Clock, HeaderSubject, user
from tests.support.redis_server import RedisServer
from ws_guard import ConfigurationError, Guard, WSGuardMiddleware, rules
from ws_guard.testing import ScriptedWebSocket


async def opened(app: WSGuardMiddleware, headers: list[tuple[bytes, bytes]]) -> ScriptedWebSocket:
    ws = ScriptedWebSocket(app, headers=headers)
    await ws.connect()
    await ws.expect("websocket.accept")
    return ws


async def echoed(ws: ScriptedWebSocket, count: int) -> None:
    for i in range(count):
        await ws.send_text(f"m{i}")
        await ws.expect("websocket.send", text=f"m{i}")


async def run_case(guard: Guard) -> None:
    app = WSGuardMiddleware(echo, guard=guard)
    anonymous = await opened(app, [])
    await echoed(anonymous, 6)  # over every rate, yet never limited: no key
    alice = await opened(app, user("alice"))
    await echoed(alice, 2)
    await alice.send_text("m2")  # the third in this second
    await alice.expect("websocket.close", code=1008, reason="rate_limited; retry-after=1")
    await alice.finished()
    await anonymous.disconnect()
    await anonymous.finished()
    snap = guard.metrics.snapshot()
    assert snap.closes_by_rule == {"rate_limited": 1}
    assert snap.closes_by_code == {1008: 1, 1000: 1}


@pytest.mark.parametrize("rate", ["2/second", "2/second; 3/minute"])
async def test_memory_a_connection_without_a_user_is_not_counted(rate: str) -> None:
    guard = Guard(
        rules=[HeaderSubject(), rules.MessageRate(rate, key=rules.by_user)], clock=Clock()
    )
    await run_case(guard)


@pytest.mark.redis
@pytest.mark.parametrize("rate", ["2/second", "2/second; 3/minute"])
async def test_redis_a_connection_without_a_user_is_not_counted(
    redis: RedisServer, rate: str
) -> None:
    rule = rules.MessageRate(rate, key=rules.by_user, lease=1)
    guard = Guard(rules=[HeaderSubject(), rule], storage=redis.url, clock=Clock())
    try:
        await run_case(guard)
    finally:
        await guard.shutdown()


@pytest.mark.parametrize("rate", [[], ()])
def test_a_rate_list_without_a_limit_is_refused(rate: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        rules.MessageRate(rate)
    assert str(info.value) == f"rate {rate!r} names no limit"
