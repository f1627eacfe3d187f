"""``guard.revoke()`` in process on an injected clock, with exact counts."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.support.apps import echo
from tests.support.jwt_keys import SECRET, mint
from ws_guard import ConfigurationError, Guard, WSGuardMiddleware, rules
from ws_guard._core.revocations import SWEEP_INTERVAL, Revocations
from ws_guard.testing import ManualClock, ScriptedWebSocket


def build(*, enforce: bool = True, first_message: bool = False) -> tuple[Guard, ManualClock]:
    clock = ManualClock()
    source = rules.from_first_message(5.0) if first_message else rules.from_query("token")
    rule = rules.JWTAuth(SECRET, algorithms=["HS256"], token=source, enforce=enforce)
    return Guard(rules=[rule], clock=clock), clock


def client(guard: Guard, token: str | None = None) -> ScriptedWebSocket:
    query = b"" if token is None else f"token={token}".encode()
    return ScriptedWebSocket(WSGuardMiddleware(echo, guard=guard), "/ws", query_string=query)


async def opened(guard: Guard, token: str) -> ScriptedWebSocket:
    ws = client(guard, token)
    await ws.connect()
    await ws.expect("websocket.accept")
    return ws


async def refused(guard: Guard, token: str) -> None:
    ws = client(guard, token)
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.expect("websocket.close", code=1008, reason="token_revoked")
    await ws.finished()


async def end(ws: ScriptedWebSocket) -> None:
    await ws.disconnect()
    await ws.finished()


def refresh(token: str) -> str:
    return json.dumps({"type": "auth.refresh", "token": token})


async def test_a_revoked_jti_is_refused_at_the_handshake_until_its_time() -> None:
    guard, clock = build()
    assert await guard.revoke(jti="t-1", until=time.time() + 60) == 0
    await refused(guard, mint("alice", jti="t-1"))
    other = await opened(guard, mint("alice", jti="t-2"))  # another token of the same user
    snap = guard.metrics.snapshot()
    assert dict(snap.closes_by_rule) == {"token_revoked": 1}
    assert dict(snap.closes_by_initiator) == {"guard": 1}
    assert (snap.revocations, snap.revocations_in_force) == (1, 1)
    clock.now += 61  # past until: the revocation is gone
    await end(await opened(guard, mint("alice", jti="t-1")))
    assert guard.metrics.snapshot().revocations_in_force == 0
    await end(other)


async def test_revoking_a_subject_closes_its_open_connections_and_refuses_new_ones() -> None:
    guard, clock = build()
    a1 = await opened(guard, mint("alice", jti="a1"))
    a2 = await opened(guard, mint("alice", jti="a2"))
    bob = await opened(guard, mint("bob", jti="b1"))
    assert await guard.revoke(subject="alice", until=time.time() + 30) == 2
    for ws in (a1, a2):
        await ws.expect("websocket.close", code=1008, reason="token_revoked")
        await end(ws)
    await refused(guard, mint("alice", jti="a3"))
    snap = guard.metrics.snapshot()
    assert dict(snap.closes) == {
        (1008, "token_revoked", "server"): 2,
        (1008, "token_revoked", "guard"): 1,
    }
    assert snap.disconnects == 2
    assert [c.subject for c in guard.connections()] == ["bob"]
    clock.now += 31
    await end(await opened(guard, mint("alice")))
    await end(bob)


async def test_revoking_a_jti_closes_only_the_connection_holding_it() -> None:
    guard, _ = build()
    keep = await opened(guard, mint("alice", jti="keep"))
    drop = await opened(guard, mint("alice", jti="drop"))
    # Both selectors match one connection: it is closed once.
    assert await guard.revoke(jti="drop", subject="nobody", until=time.time() + 30) == 1
    await drop.expect("websocket.close", code=1008, reason="token_revoked")
    await end(drop)
    assert [c.subject for c in guard.connections()] == ["alice"]
    assert guard.metrics.snapshot().closes_by_rule == {"token_revoked": 1}
    await end(keep)


async def test_a_refresh_with_a_revoked_token_closes_the_connection() -> None:
    guard, _ = build()
    ws = await opened(guard, mint("alice", jti="old", exp_in=600))
    await guard.revoke(jti="new", until=time.time() + 30)
    await ws.send_text(refresh(mint("alice", jti="new", exp_in=1200)))
    await ws.expect("websocket.close", code=1008, reason="token_revoked")
    await end(ws)
    # A refresh that is not revoked goes through, as before.
    ws = await opened(guard, mint("alice", jti="old", exp_in=600))
    await ws.send_text(refresh(mint("alice", jti="newer", exp_in=1200)))
    await ws.send_text("hi")
    await ws.expect("websocket.send", text="hi")
    await end(ws)
    assert dict(guard.metrics.snapshot().closes_by_rule) == {"token_revoked": 1}


async def test_a_revoked_first_message_token_is_refused() -> None:
    guard, _ = build(first_message=True)
    await guard.revoke(subject="alice", until=time.time() + 30)
    ws = client(guard)
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.send_text(json.dumps({"token": mint("alice")}))
    await ws.expect("websocket.close", code=1008, reason="token_revoked")
    await ws.finished()
    ws = client(guard)
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.send_text(json.dumps({"token": mint("bob")}))
    await ws.send_text("hi")
    await ws.expect("websocket.send", text="hi")
    await end(ws)


async def test_shadow_mode_counts_a_revoked_token_and_admits_it() -> None:
    guard, _ = build(enforce=False)
    await guard.revoke(jti="t", until=time.time() + 30)
    ws = await opened(guard, mint("alice", jti="t"))
    await ws.send_text("hi")
    await ws.expect("websocket.send", text="hi")
    assert [c.subject for c in guard.connections()] == ["alice"]  # identity applied
    snap = guard.metrics.snapshot()
    assert dict(snap.shadow_breaches_by_rule) == {"token_revoked": 1}
    assert dict(snap.closes_by_rule) == {}
    await end(ws)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"until": 1e12}, "needs jti= or subject="),
        ({"jti": "", "until": 1e12}, "jti must be a non-empty string, not ''"),
        ({"subject": 7, "until": 1e12}, "subject must be a non-empty string, not 7"),
        ({"jti": "t", "until": 1.0}, "until must be later than now"),
        ({"jti": "t", "until": True}, "not True"),
        ({"jti": "t", "until": "tomorrow"}, "not 'tomorrow'"),
        ({"jti": "t", "until": float("nan")}, "not nan"),
        ({"jti": "t", "until": time.time() * 1000}, "at most a year ahead"),
    ],
)
async def test_revoke_refuses_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    guard, _ = build()
    with pytest.raises(ConfigurationError, match=message):
        await guard.revoke(**kwargs)
    snap = guard.metrics.snapshot()
    assert (snap.revocations, snap.revocations_in_force) == (0, 0)


def test_expired_revocations_are_swept_so_the_store_stays_bounded() -> None:
    clock = ManualClock()
    store = Revocations(clock)
    for i in range(1000):
        store.add(jti=f"t{i}", subject=None, expires=clock.now + 10)
    assert store.count() == 1000
    assert store.revoked("t5", None)
    clock.now += 10  # at the expiry: no longer revoked
    assert not store.revoked("t5", None)
    clock.now += SWEEP_INTERVAL
    store.add(jti="fresh", subject="s", expires=clock.now + 10)  # the due sweep runs here
    assert len(store._jtis) + len(store._subjects) == 2
    assert store.in_force() == {"jti": {"fresh": clock.now + 10}, "subject": {"s": clock.now + 10}}
    # A later until extends; an earlier one never shortens.
    store.add(jti="fresh", subject=None, expires=clock.now + 5)
    assert store.in_force()["jti"] == {"fresh": clock.now + 10}
    assert not store.revoked(None, 5)  # a non-string claim never matches


def test_a_burst_of_short_revocations_is_swept_before_the_interval() -> None:
    clock = ManualClock()
    store = Revocations(clock)
    store.sweep(clock.now)
    for i in range(100):
        store.add(jti=f"a{i}", subject=None, expires=clock.now + 1)
    clock.now += 2  # all expired, the interval not yet over
    for i in range(200):
        store.add(jti=f"b{i}", subject=None, expires=clock.now + 100)
    assert len(store._jtis) == 200  # the expired burst went at a doubling, not at the interval
