"""``AutoBan`` against a client with many addresses: the bans it holds stay bounded.

An IPv6 client holds 2**16 /64 networks per /48, each its own key: one ban
per address struck out, lasting up to a week, grew the ban store without
bound while the strikes before it were bounded by ``max_keys``. Now the
bans are bounded the same way; past the bound the oldest goes first
(logged once), and the newest offenders stay banned.
"""

from __future__ import annotations

import logging

import pytest

from tests.support.apps import echo
from ws_guard import Guard, WSGuardMiddleware, rules
from ws_guard.testing import ManualClock, ScriptedWebSocket


async def offend(guard: Guard, ip: str) -> None:
    """One connection closed for policy (1008 content:no_bad)."""
    ws = ScriptedWebSocket(WSGuardMiddleware(echo, guard=guard), "/ws", client=(ip, 4000))
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.send_text("bad")
    await ws.expect("websocket.close", code=1008, reason="content:no_bad")
    await ws.disconnect()
    await ws.finished()


async def banned(guard: Guard, ip: str) -> bool:
    ws = ScriptedWebSocket(WSGuardMiddleware(echo, guard=guard), "/ws", client=(ip, 4000))
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.send_text("hi")
    reply = await ws.next()
    if reply["type"] != "websocket.close":
        await ws.disconnect()
    await ws.finished()
    return reply["type"] == "websocket.close" and reply["reason"].startswith("banned;")


@pytest.mark.parametrize("enforce", [True, False], ids=["enforce", "shadow"])
async def test_bans_from_many_networks_stay_within_max_keys(
    enforce: bool, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock()
    ban = rules.AutoBan(after=1, within=60, ban=7 * 86400, max_keys=4, enforce=enforce)
    content = rules.Content(lambda m: "bad" not in m, name="no_bad")
    guard = Guard(rules=[ban, content], clock=clock)
    networks = [f"2001:db8:0:{i:x}::1" for i in range(10)]
    for ip in networks:
        await offend(guard, ip)
        clock.now += 1
    listed = await guard.bans()
    assert [b.key for b in listed] == [f"2001:db8:0:{i:x}::/64" for i in range(6, 10)]
    snap = guard.metrics.snapshot()
    assert (snap.bans, snap.bans_in_force) == (10, 4)
    if enforce:
        assert await banned(guard, networks[-1])
        assert not await banned(guard, networks[0])  # dropped early for a newer one
    full = [r for r in caplog.records if "ban store full" in r.getMessage()]
    assert [r.levelno for r in full] == [logging.WARNING]


async def test_bans_heard_from_other_processes_are_bounded_too() -> None:
    clock = ManualClock()
    guard = Guard(rules=[rules.AutoBan(after=1, within=60, ban=600, max_keys=3)], clock=clock)
    for i in range(7):
        guard.apply_remote({"op": "ban", "rule": "r", "key": f"198.51.100.{i}", "ttl": 600})
    assert sorted(b.key for b in await guard.bans()) == [f"198.51.100.{i}" for i in (4, 5, 6)]


def test_the_bound_is_the_sum_of_every_auto_bans_max_keys() -> None:
    first = rules.AutoBan(after=1, within=60, ban=600, max_keys=3, name="a")
    second = rules.AutoBan(after=5, within=60, ban=600, max_keys=7, name="b")
    assert Guard(rules=[first, second]).ban_store.max_bans == 10
    assert Guard().ban_store.max_bans == 100_000  # bans heard from other processes only
