"""The same limits through ``redis+cluster://`` and ``redis+sentinel://`` storage URIs.

A one-node cluster (every slot on one real redis-server in cluster mode) and a
primary behind one real Sentinel: enough to run the cluster client's slot
routing, hash-tagged multi-key scripts and pipelines, and the Sentinel
client's primary lookup, end to end.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.apps import echo
from tests.support.helpers import eventually
from tests.support.rate_helpers import HeaderSubject, user
from tests.support.redis_server import redis_cluster, redis_sentinel
from ws_guard import Guard, WSGuardMiddleware, rules
from ws_guard.rules.keys import user_key
from ws_guard.rules.limits.keying import redis_key
from ws_guard.testing import ScriptedWebSocket

pytestmark = [pytest.mark.redis]


@pytest.fixture(params=["cluster", "sentinel"])
def storage_uri(request: pytest.FixtureRequest) -> Iterator[str]:
    make = redis_cluster if request.param == "cluster" else redis_sentinel
    with make() as uri:
        yield uri


async def slot_expiries(guard: Guard, key: str) -> list[float]:
    """The expiry times (ms, Redis' clock) of *key*'s slots, read through the topology."""
    return [score for _, score in await guard.storage.redis().zrange(key, 0, -1, withscores=True)]


async def test_every_rule_works_on_the_topology(storage_uri: str) -> None:
    cap = rules.MaxConnectionsPerKey(2, key=rules.by_user, heartbeat=0.2)
    guard = Guard(
        rules=[
            HeaderSubject(),
            rules.ConnectRate("3/minute; 100/hour"),
            cap,
            rules.MessageRate("4/minute", key=rules.by_user),
        ],
        storage=storage_uri,
    )
    slots = redis_key(guard.namespace, "slots", cap.id, user_key(None, "alice"))
    app = WSGuardMiddleware(echo, guard=guard)
    try:
        first, second, third = (ScriptedWebSocket(app, headers=user("alice")) for _ in range(3))
        for ws in (first, second, third):
            await ws.connect()
            await ws.expect("websocket.accept")
        await third.expect("websocket.close", code=1008, reason="too_many_connections")
        bob = ScriptedWebSocket(app, headers=user("bob"))
        await bob.connect()
        await bob.expect("websocket.accept")
        await bob.expect(
            "websocket.close", code=1008, reason="connect_rate_limited; retry-after=60"
        )
        for i, ws in enumerate((first, second, first, second)):
            await ws.send_text(f"m{i}")
            await ws.expect("websocket.send", text=f"m{i}")
        # Two heartbeats on the maintenance task, each pushing both slots' expiry.
        for _ in range(2):
            before = max(await slot_expiries(guard, slots))

            async def beaten(before: float = before) -> bool:
                expiries = await slot_expiries(guard, slots)
                return len(expiries) == 2 and min(expiries) > before

            await eventually(beaten, what="a heartbeat through the topology")
        await first.send_text("fifth")
        await first.expect("websocket.close", code=1008, reason="rate_limited; retry-after=60")
        await second.disconnect()
        for ws in (first, second, third, bob):
            await ws.finished()
        snap = guard.metrics.snapshot()
        assert snap.storage_errors == 0
        assert snap.closes_by_rule == {
            "too_many_connections": 1,
            "connect_rate_limited": 1,
            "rate_limited": 1,
        }
    finally:
        await guard.shutdown()


@pytest.mark.parametrize("mode", ["allow", "deny"])
async def test_a_cluster_that_stops_answering_is_a_storage_error(mode: str) -> None:
    # redis-py raises RedisClusterException (not a RedisError) when no node of
    # a cluster answers: it is a storage error like any other outage, handled
    # by on_storage_error, never raised out of a handshake or the shutdown.
    # And the control channel subscribes on a cluster (redis-py 8.1's cluster
    # pub/sub raised KeyError before the client knew its slots).
    cap = rules.MaxConnectionsPerKey(2, key=rules.by_ip)
    with redis_cluster() as uri:
        guard = Guard(
            rules=[rules.ConnectRate("100/minute"), cap], storage=uri, on_storage_error=mode
        )
        app = WSGuardMiddleware(echo, guard=guard)
        await guard.startup()
        await eventually(lambda: guard.channel.subscribed, what="control channel subscribed")
        held = ScriptedWebSocket(app)  # open while the cluster goes: its slot is released after
        await held.connect()
        await held.expect("websocket.accept")
    # The cluster's one node is gone. The first failed call makes the client
    # look for the cluster's nodes again; from then on it raises
    # RedisClusterException ("cannot be connected").
    for _ in range(3):
        late = ScriptedWebSocket(app)
        await late.connect()
        if mode == "allow":
            await late.expect("websocket.accept")
            await late.disconnect()
        else:  # accepted, then closed: the code reaches every client (reject="close")
            await late.expect("websocket.accept")
            await late.expect("websocket.close", code=1013, reason="storage_unavailable")
            await late.disconnect(1013)
        await late.finished()
    assert guard.metrics.snapshot().storage_errors >= 3
    await held.disconnect()
    await held.finished()
    await guard.shutdown()  # no RedisClusterException out of the slots' release
