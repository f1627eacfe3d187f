"""``rules.AutoBan`` in process on an injected clock: strikes, bans, unban, shadow, exact counts."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.support.apps import echo
from ws_guard import BanInfo, ConfigurationError, Guard, WSGuardMiddleware, rules
from ws_guard.testing import ManualClock, ScriptedWebSocket

IP = "203.0.113.5"


def build(*extra: rules.Rule, **options: Any) -> tuple[Guard, ManualClock]:
    clock = ManualClock()
    ban = rules.AutoBan(**{"after": 3, "within": 60, "ban": 300, **options})
    content = rules.Content(lambda m: "bad" not in m, name="no_bad")
    return Guard(rules=[ban, content, *extra], clock=clock), clock


def client(guard: Guard, ip: str | None = IP) -> ScriptedWebSocket:
    return ScriptedWebSocket(
        WSGuardMiddleware(echo, guard=guard), "/ws", client=None if ip is None else (ip, 4000)
    )


async def offend(guard: Guard, ip: str | None = IP, text: str = "bad") -> None:
    """One connection closed for policy (1008 content:no_bad)."""
    ws = client(guard, ip)
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.send_text(text)
    await ws.next()
    await ws.disconnect()
    await ws.finished()


async def handshake(guard: Guard, ip: str = IP) -> dict[str, Any] | None:
    """The close a handshake gets, or None when admitted (then closed by the client)."""
    ws = client(guard, ip)
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.send_text("hi")
    reply = await ws.next()
    if reply["type"] == "websocket.close":
        await ws.finished()
        return {"code": reply["code"], "reason": reply["reason"]}
    await ws.disconnect()
    await ws.finished()
    return None


async def test_the_nth_policy_close_in_the_window_bans_the_address() -> None:
    guard, clock = build()
    for _ in range(2):
        await offend(guard)
    assert await handshake(guard) is None  # two strikes: not yet
    await offend(guard)
    assert await handshake(guard) == {"code": 1008, "reason": "banned; retry-after=300"}
    assert await handshake(guard, "198.51.100.1") is None  # another address
    clock.now += 100
    assert await handshake(guard) == {"code": 1008, "reason": "banned; retry-after=200"}
    snap = guard.metrics.snapshot()
    assert dict(snap.closes_by_rule) == {"content:no_bad": 3, "banned": 2}
    assert (snap.bans, snap.bans_in_force) == (1, 1)
    clock.now += 200  # the ban is over
    assert await handshake(guard) is None
    snap = guard.metrics.snapshot()
    assert (snap.bans, snap.bans_in_force) == (1, 0)
    assert await guard.bans() == []


async def test_strikes_outside_the_window_do_not_add_up() -> None:
    guard, clock = build()
    await offend(guard)
    await offend(guard)
    clock.now += 61  # the first two leave the window
    await offend(guard)
    await offend(guard)
    assert await handshake(guard) is None
    await offend(guard)  # three within 60 s
    assert await handshake(guard) == {"code": 1008, "reason": "banned; retry-after=300"}


async def test_a_banned_client_knocking_does_not_extend_its_ban() -> None:
    guard, clock = build()
    for _ in range(3):
        await offend(guard)
    for _ in range(5):
        assert (await handshake(guard) or {}).get("code") == 1008
    clock.now += 300
    assert await handshake(guard) is None
    assert guard.metrics.snapshot().bans == 1


async def test_bans_lists_and_unban_lifts() -> None:
    guard, _ = build()
    for _ in range(3):
        await offend(guard)
    before = time.time()
    (ban,) = await guard.bans()
    assert isinstance(ban, BanInfo)
    assert (ban.key, ban.rule, ban.shadow) == (IP, "by_ip:3/60s", False)
    assert before + 299 <= ban.until <= time.time() + 301
    assert await guard.unban(IP) == 1
    assert await guard.unban(IP) == 0
    assert await guard.bans() == []
    assert await handshake(guard) is None
    # The strikes start again from zero after a ban.
    await offend(guard)
    await offend(guard)
    assert await handshake(guard) is None
    with pytest.raises(ConfigurationError, match="unban key must be a non-empty string, not ''"):
        await guard.unban("")


async def test_shadow_mode_lists_the_ban_and_admits_the_key() -> None:
    guard, _ = build(enforce=False)
    for _ in range(3):
        await offend(guard)
    assert [(b.key, b.shadow) for b in await guard.bans()] == [(IP, True)]
    assert await handshake(guard) is None
    snap = guard.metrics.snapshot()
    assert dict(snap.shadow_breaches_by_rule) == {"banned": 1}
    assert (snap.bans, snap.bans_in_force) == (1, 1)
    assert dict(snap.closes_by_rule) == {"content:no_bad": 3}


async def test_only_the_configured_codes_count() -> None:
    guard, _ = build(rules.MaxMessageSize(8))
    for _ in range(3):
        await offend(guard, text="x" * 9)  # 1009 message_too_big
    assert await handshake(guard) is None
    guard, _ = build(rules.MaxMessageSize(8), codes=(1008, 1009))
    for _ in range(3):
        await offend(guard, text="x" * 9)
    assert await handshake(guard) == {"code": 1008, "reason": "banned; retry-after=300"}


async def test_refusals_at_the_handshake_count_as_strikes() -> None:
    guard, _ = build(rules.ConnectRate("1/minute"), after=2)
    assert await handshake(guard) is None
    for _ in range(2):
        reply = await handshake(guard)
        assert reply == {"code": 1008, "reason": "connect_rate_limited; retry-after=60"}
    assert await handshake(guard) == {"code": 1008, "reason": "banned; retry-after=300"}


async def test_server_disconnects_and_clients_without_an_address_never_count() -> None:
    guard, _ = build()
    for _ in range(3):
        ws = client(guard)
        await ws.connect()
        await ws.expect("websocket.accept")
        assert await guard.disconnect(key=IP) == 1
        await ws.expect("websocket.close", code=1008, reason="disconnected")
        await ws.disconnect()
        await ws.finished()
    assert await handshake(guard) is None
    for _ in range(3):
        await offend(guard, ip=None)
    assert await guard.bans() == []


async def test_the_strike_map_keeps_at_most_max_keys() -> None:
    guard, _ = build(max_keys=2)
    rule = guard.rules[0]
    assert isinstance(rule, rules.AutoBan)
    for i in range(5):
        await offend(guard, ip=f"198.51.100.{i}")
    assert list(rule._strikes) == ["198.51.100.3", "198.51.100.4"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"after": 0}, "AutoBan after must be a positive integer, not 0"),
        ({"after": 2.5}, "AutoBan after must be a positive integer, not 2.5"),
        ({"within": 0}, "AutoBan within must be a positive number of seconds, not 0"),
        ({"within": 60_000_000}, "AutoBan within"),
        ({"ban": -1}, "AutoBan ban must be a positive number of seconds, not -1"),
        ({"ban": 3_600_000}, "AutoBan ban"),
        ({"codes": ()}, "at least one close code"),
        ({"codes": (1006,)}, "1006 is not a close code"),
        ({"codes": "1008"}, "must be a list of close codes, not '1008'"),
        ({"codes": (1008, 1013)}, "1013 is the server's overload, not the client's fault"),
        ({"codes": (1011,)}, "1011 is the server's own error, not the client's fault"),
        ({"codes": (1012,)}, "1012 is a server restart, not the client's fault"),
        ({"codes": (1001,)}, "1001 is a planned end .going away"),
        ({"codes": (1000,)}, "1000 is a normal closure, not the client's fault"),
        ({"codes": (1014,)}, "1014 is a gateway's error, not the client's fault"),
        ({"key": rules.by_user}, "key=rules.by_user is not known yet"),
        ({"key": rules.by_connection}, "never limits"),
        ({"max_keys": 0}, "AutoBan max_keys must be a positive integer, not 0"),
        ({"enforce": "no"}, "enforce must be True or False, not 'no'"),
    ],
)
def test_bad_settings_raise_with_the_value(options: dict[str, Any], message: str) -> None:
    settings: dict[str, Any] = {"after": 3, "within": 60, "ban": 300, **options}
    with pytest.raises(ConfigurationError, match=message):
        rules.AutoBan(**settings)


def test_client_fault_codes_and_app_codes_are_taken() -> None:
    rule = rules.AutoBan(after=3, within=60, ban=300, codes=(1002, 1003, 1007, 1008, 1009, 4001))
    assert rule.codes == frozenset({1002, 1003, 1007, 1008, 1009, 4001})
