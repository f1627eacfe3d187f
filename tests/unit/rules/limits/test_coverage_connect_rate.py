"""``ConnectRate`` at its edges: no key, eviction by the longest window, the sweep job.

A key function may return ``None`` (a header the client did not send): that
handshake is not counted. With several rates, a key is alive while any of
its windows may still refuse, so evicting it to stay within ``max_keys``
counts as an eviction of a live key until its longest window has passed.
Expired keys are swept by the guard's maintenance task. In process, memory
storage, injected clock.
"""

from __future__ import annotations

import pytest

from tests.support.apps import echo
from tests.support.helpers import eventually
from tests.support.helpers import handshake_outcome as handshake
from tests.support.rate_helpers import Clock
from ws_guard import ConfigurationError, Guard, WSGuardMiddleware, rules
from ws_guard._core.connection import Connection
from ws_guard.rules.limits.attempts import CounterStore
from ws_guard.rules.limits.rates import parse_rates


def team(conn: Connection) -> str | None:
    return conn.header("x-team")


async def test_a_handshake_without_a_key_is_not_counted() -> None:
    rule = rules.ConnectRate("1/minute", key=team)
    guard = Guard(rules=[rule], clock=Clock(0.0))
    app = WSGuardMiddleware(echo, guard=guard)
    for _ in range(3):
        assert await handshake(app) == {"type": "websocket.accept"}
    red = [(b"x-team", b"red")]
    assert await handshake(app, headers=red) == {"type": "websocket.accept"}
    refused = await handshake(app, headers=red)
    assert (refused["code"], refused["reason"]) == (1008, "connect_rate_limited; retry-after=60")
    assert guard.metrics.snapshot().closes_by_rule == {"connect_rate_limited": 1}


@pytest.mark.parametrize(("later", "evicted"), [(5.0, 1), (120.0, 0)])
def test_a_key_is_live_until_its_longest_window_passed(later: float, evicted: int) -> None:
    store = CounterStore(parse_rates("2/second; 3/minute"), max_keys=1)
    assert store.hit("a", 0.0) is None
    # At t=5 the second's window is long gone, the minute's is not: "a" is
    # still live, and pushing it out to make room for "b" is an eviction.
    assert store.hit("b", later) is None
    assert store.evicted == evicted
    assert len(store) == 1


@pytest.mark.parametrize("rate", [[], ()])
def test_a_rate_list_without_a_limit_is_refused(rate: object) -> None:
    with pytest.raises(ConfigurationError) as info:
        rules.ConnectRate(rate)
    assert str(info.value) == f"rate {rate!r} names no limit"


async def test_expired_keys_are_swept_by_the_maintenance_task() -> None:
    clock = Clock(0.0)
    rule = rules.ConnectRate("1/second", key=rules.by_ip)
    guard = Guard(rules=[rule], clock=clock)
    app = WSGuardMiddleware(echo, guard=guard)
    for i in range(3):
        await handshake(app, client=(f"10.0.0.{i}", 4000))
    counters = rule._counters
    assert counters is not None
    assert len(counters) == 3
    clock.now = 2.5  # every key's window and the one after it are over
    # The sweep runs every shortest window (1 s) of the loop's real time.
    await eventually(lambda: len(counters) == 0, what="the sweep dropping expired keys")
    assert rule.evicted == 0
    await guard.shutdown()
