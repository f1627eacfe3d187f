"""Operations heard from other processes (``_core/fanout.py``), applied in process.

The Redis round trip itself is tested end to end (tests/e2e/test_control_redis.py);
here each published shape is applied to this process's connections, and
malformed ones are dropped with a warning, never raised.
"""

from __future__ import annotations

import json
import logging

import pytest

from tests.support.apps import echo
from ws_guard import Guard, WSGuardMiddleware, rules
from ws_guard._core.fanout import ControlChannel
from ws_guard.testing import ManualClock, ScriptedWebSocket

IP = "203.0.113.5"


async def opened(guard: Guard) -> ScriptedWebSocket:
    ws = ScriptedWebSocket(WSGuardMiddleware(echo, guard=guard), "/ws", client=(IP, 4000))
    await ws.connect()
    await ws.expect("websocket.accept")
    return ws


def channel(guard: Guard) -> ControlChannel:
    return guard.channel


async def test_a_published_disconnect_closes_matching_connections_here() -> None:
    guard = Guard()
    ws = await opened(guard)
    message = {"op": "disconnect", "key": IP, "code": 4002, "reason": "elsewhere", "origin": "x"}
    channel(guard)._receive(json.dumps(message).encode())
    await ws.expect("websocket.close", code=4002, reason="elsewhere")
    await ws.disconnect()
    await ws.finished()
    assert guard.metrics.snapshot().closes_by_rule == {"disconnect": 1}


async def test_own_messages_are_not_applied_twice() -> None:
    guard = Guard()
    ws = await opened(guard)
    own = {"op": "disconnect", "key": IP, "code": 1008, "reason": "x"}
    channel(guard)._receive(json.dumps({**own, "origin": channel(guard).origin}))
    assert guard.metrics.snapshot().disconnects == 0
    await ws.disconnect()
    await ws.finished()


async def test_published_revoke_ban_and_unban_reach_the_stores() -> None:
    clock = ManualClock()
    guard = Guard(clock=clock)
    receive = channel(guard)._receive
    receive(json.dumps({"op": "revoke", "jti": "t", "ttl": 30, "origin": "x"}))
    assert guard.revocations.revoked("t", None)
    receive(json.dumps({"op": "ban", "rule": "r", "key": IP, "ttl": 60, "origin": "x"}))
    assert [(b.key, b.rule, b.shadow) for b in await guard.bans()] == [(IP, "r", False)]
    receive(json.dumps({"op": "unban", "key": IP, "origin": "x"}))
    assert await guard.bans() == []
    clock.now += 31
    assert not guard.revocations.revoked("t", None)


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        b"[" * 5000,
        json.dumps({"op": "disconnect", "origin": "x"}),
        json.dumps({"op": "disconnect", "subject": "a", "code": 1006, "origin": "x"}),
        json.dumps({"op": "disconnect", "subject": "a", "code": 1008, "reason": "é" * 70}),
        json.dumps({"op": "revoke", "jti": "t", "ttl": -1, "origin": "x"}),
        json.dumps({"op": "revoke", "jti": "t", "ttl": 1e12, "origin": "x"}),
        json.dumps({"op": "revoke", "jti": 5, "ttl": 5, "origin": "x"}),
        json.dumps({"op": "ban", "key": IP, "ttl": 5, "origin": "x"}),
        json.dumps({"op": "ban", "rule": "r", "key": IP, "ttl": 8 * 86_400, "origin": "x"}),
        json.dumps({"op": "unban", "origin": "x"}),
        json.dumps({"op": "strike", "key": IP, "origin": "x"}),
        json.dumps({"op": "strike", "rule": "r", "key": ["a"], "origin": "x"}),
        json.dumps({"op": "drop_tables", "origin": "x"}),
        None,
    ],
)
async def test_malformed_messages_are_dropped_with_a_warning(
    data: object, caplog: pytest.LogCaptureFixture
) -> None:
    guard = Guard()
    ws = await opened(guard)
    channel(guard)._receive(data)
    assert [r.levelno for r in caplog.records if r.name == "ws_guard"] == [logging.WARNING]
    assert guard.metrics.snapshot().disconnects == 0
    assert guard.metrics.snapshot().revocations_in_force == 0
    await ws.disconnect()
    await ws.finished()


def test_memory_storage_has_no_channel_work() -> None:
    guard = Guard()
    assert not guard.channel.active
    assert guard.revocations.remote is None
    assert guard.ban_store.announce is None


async def test_strikes_heard_from_other_processes_count_toward_a_ban_here() -> None:
    """AutoBan counts the policy closes of every process: 2 elsewhere + 1 here ban."""
    ban = rules.AutoBan(after=3, within=60, ban=30)
    guard = Guard(
        rules=[ban, rules.Content(lambda text: "x" not in text, name="no_x")],
        clock=ManualClock(),
    )
    await guard.startup()
    published: list[tuple[str, str]] = []
    guard.ban_store.announce_strike = lambda rule, key: published.append((rule, key))
    receive = channel(guard)._receive
    strike = {"op": "strike", "rule": ban.id, "key": IP, "origin": "x"}
    receive(json.dumps(strike))  # 1, elsewhere
    receive(json.dumps({**strike, "rule": "not ours"}))  # no AutoBan by that label here
    receive(json.dumps({**strike, "key": "198.51.100.1"}))  # another address
    ws = await opened(guard)
    await ws.send_text("x")  # 2: a policy close here, told to the others
    await ws.expect("websocket.close", code=1008)
    await ws.disconnect(1008)
    await ws.finished()
    assert published == [(ban.id, IP)]
    assert await guard.bans() == []
    receive(json.dumps(strike))  # 3, elsewhere: banned here too
    assert [(b.key, b.rule) for b in await guard.bans()] == [(IP, ban.id)]
    # The process whose own close was the third strike announces and counts the ban.
    assert published == [(ban.id, IP)]
    assert guard.metrics.snapshot().bans == 0
    await guard.shutdown()
    assert ban.id not in guard.ban_store.strikers


async def test_a_listener_stopped_by_an_error_says_so_at_once(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Not a storage error (those are retried): the channel cannot go on, and
    # the log says so when it happens, not when the task is collected.
    async def broken(self: ControlChannel, token: object) -> None:
        raise KeyError(11481)  # what redis-py 8.1's cluster pub/sub raised

    monkeypatch.setattr(ControlChannel, "_listen_until_stopped", broken)
    guard = Guard(storage="redis://127.0.0.1:1")  # never reached: the listener fails first
    with pytest.raises(KeyError):
        await channel(guard)._listen(object())
    (record,) = [r for r in caplog.records if r.name == "ws_guard"]
    assert record.levelno == logging.ERROR
    assert record.getMessage() == (
        f"ws_guard control channel {channel(guard).channel} stopped: disconnects, revocations "
        "and bans from other processes no longer reach this one"
    )
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], KeyError)
