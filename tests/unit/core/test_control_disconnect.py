"""``guard.connections()`` and ``guard.disconnect()`` in process, with exact counts."""

from __future__ import annotations

import time
from dataclasses import FrozenInstanceError

import pytest

from tests.support.apps import Recorder, echo
from tests.support.jwt_keys import SECRET, mint
from ws_guard import ConfigurationError, ConnectionSnapshot, Guard, WSGuardMiddleware, rules
from ws_guard.testing import ScriptedWebSocket


def jwt_guard(**options: object) -> Guard:
    return Guard(
        rules=[rules.JWTAuth(SECRET, algorithms=["HS256"], token=rules.from_query("token"))],
        **options,  # type: ignore[arg-type]
    )


async def open_as(
    guard: Guard, sub: str, client: tuple[str, int], app: object = echo
) -> ScriptedWebSocket:
    ws = ScriptedWebSocket(
        WSGuardMiddleware(app, guard=guard),  # type: ignore[arg-type]
        "/ws",
        query_string=f"token={mint(sub)}".encode(),
        client=client,
    )
    await ws.connect()
    await ws.expect("websocket.accept")
    return ws


async def test_connections_lists_each_open_connection_without_its_token() -> None:
    guard = jwt_guard()
    before = time.time()
    alice = await open_as(guard, "alice", ("203.0.113.5", 4000))
    bob = await open_as(guard, "bob", ("2001:db8::7", 4001))
    listed = guard.connections()
    assert [(c.subject, c.client_ip, c.key, c.path, c.state) for c in listed] == [
        ("alice", "203.0.113.5", "203.0.113.5", "/ws", "open"),
        ("bob", "2001:db8::7", "2001:db8::/64", "/ws", "open"),
    ]
    assert all(isinstance(c, ConnectionSnapshot) for c in listed)
    assert all(len(c.id) == 32 for c in listed)
    assert all(before - 1 <= c.opened_at <= time.time() + 1 for c in listed)
    assert "token" not in repr(listed)
    assert "eyJ" not in repr(listed)  # no part of any JWT (every one starts so)
    with pytest.raises(FrozenInstanceError):
        listed[0].subject = "mallory"  # type: ignore[misc]
    assert not hasattr(listed[0], "__dict__")  # slotted
    await alice.disconnect()
    await alice.finished()
    assert [c.subject for c in guard.connections()] == ["bob"]
    await bob.disconnect()
    await bob.finished()
    assert guard.connections() == []


async def test_disconnect_by_subject_closes_every_match_through_the_close_path() -> None:
    guard = jwt_guard()
    app = Recorder()
    first = await open_as(guard, "alice", ("203.0.113.5", 4000), app)
    second = await open_as(guard, "alice", ("198.51.100.1", 4001), app)
    other = await open_as(guard, "bob", ("203.0.113.5", 4002))
    closed = await guard.disconnect(subject="alice", code=4001, reason="account blocked")
    assert closed == 2
    for ws in (first, second):
        await ws.expect("websocket.close", code=4001, reason="account blocked")
        await ws.disconnect(4001, "account blocked")  # the client answers the close
        await ws.finished()
    assert (
        app.received.count(
            {"type": "websocket.disconnect", "code": 4001, "reason": "account blocked"}
        )
        == 2
    )
    snap = guard.metrics.snapshot()
    assert dict(snap.closes_by_rule) == {"disconnect": 2}
    assert dict(snap.closes_by_initiator) == {"server": 2}
    assert dict(snap.closes_by_code) == {4001: 2}
    assert snap.disconnects == 2
    assert [c.subject for c in guard.connections()] == ["bob"]
    # Nothing left to match: zero, and no counter moves.
    assert await guard.disconnect(subject="alice") == 0
    assert guard.metrics.snapshot().disconnects == 2
    await other.disconnect()
    await other.finished()


async def test_disconnect_default_code_and_reason_and_selectors_combine() -> None:
    guard = jwt_guard()
    a = await open_as(guard, "alice", ("203.0.113.5", 4000))
    b = await open_as(guard, "alice", ("2001:db8::1", 4001))
    c = await open_as(guard, "carol", ("2001:db8::2", 4002))
    # AND: alice on 2001:db8::/64 is one connection, not three.
    assert await guard.disconnect(subject="alice", key="2001:db8::/64") == 1
    await b.expect("websocket.close", code=1008, reason="disconnected")
    await b.disconnect(1008)
    await b.finished()
    # An exact IPv6 address matches too, and so does a connection id.
    assert await guard.disconnect(key="2001:db8::2") == 1
    await c.expect("websocket.close", code=1008, reason="disconnected")
    (left,) = guard.connections()
    assert await guard.disconnect(connection_id="f" * 32) == 0
    assert await guard.disconnect(connection_id=left.id, code=1000, reason="") == 1
    await a.expect("websocket.close", code=1000, reason="")
    for ws in (a, c):
        await ws.disconnect()
        await ws.finished()
    assert dict(guard.metrics.snapshot().closes_by_code) == {1008: 2, 1000: 1}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "at least one of subject=, key= or connection_id="),
        ({"subject": ""}, "subject must be a non-empty string, not ''"),
        ({"key": 5}, "key must be a non-empty string, not 5"),
        ({"connection_id": b"ab"}, "connection_id must be a non-empty string, not b'ab'"),
        ({"subject": "a", "code": 1006}, "not 1006"),
        ({"subject": "a", "code": 1009}, "not 1009"),
        ({"subject": "a", "code": 5000}, "not 5000"),
        ({"subject": "a", "code": 2999}, "not 2999"),
        ({"subject": "a", "code": True}, "must be an int, not True"),
        ({"subject": "a", "code": "1008"}, "must be an int, not '1008'"),
        ({"subject": "a", "reason": "x" * 124}, "at most 123 bytes of UTF-8, not 124"),
        ({"subject": "a", "reason": "é" * 62}, "not 124"),  # 62 characters, 124 bytes
        ({"subject": "a", "reason": "\ud800"}, "not valid UTF-8"),
        ({"subject": "a", "reason": None}, "must be a string, not None"),
    ],
)
async def test_disconnect_refuses_bad_arguments_with_the_value(
    kwargs: dict[str, object], message: str
) -> None:
    guard = jwt_guard()
    ws = await open_as(guard, "a", ("203.0.113.5", 4000))
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(")):
        await guard.disconnect(**kwargs)  # type: ignore[arg-type]
    assert guard.metrics.snapshot().disconnects == 0
    assert [c.subject for c in guard.connections()] == ["a"]
    await ws.disconnect()
    await ws.finished()


async def test_disconnect_accepts_the_boundary_values() -> None:
    guard = jwt_guard()
    wss = [await open_as(guard, "a", ("203.0.113.5", 4000 + i)) for i in range(4)]
    ids = [c.id for c in guard.connections()]
    for conn_id, code, reason in zip(
        ids, (3000, 4999, 1013, 1001), ("x" * 123, "é" * 61 + "x", "", "bye"), strict=True
    ):
        assert await guard.disconnect(connection_id=conn_id, code=code, reason=reason) == 1
    closes = sorted([(m["code"], m["reason"]) for m in [await ws.next() for ws in wss]])
    assert closes == [(1001, "bye"), (1013, ""), (3000, "x" * 123), (4999, "é" * 61 + "x")]
    for ws in wss:
        await ws.disconnect()
        await ws.finished()
