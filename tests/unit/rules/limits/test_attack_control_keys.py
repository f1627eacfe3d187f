"""A key callable that returns what a client wrote: every limit's key stays short.

``AutoBan`` keeps strikes for up to ``max_keys`` keys and as many bans; a
rate keeps a window per key. A key callable reading a header would make
each entry as long as the header (8 KiB and more): 100 000 of them are
almost a gigabyte. A key past 200 characters is now its digest,
``sha256:<32 hex>``, as ``rules.by_user``'s always was.
"""

from __future__ import annotations

import hashlib

from tests.support.apps import echo
from ws_guard import Guard, WSGuardMiddleware, rules
from ws_guard.rules.context import RuleContext
from ws_guard.rules.keys import MAX_USER_KEY, bounded_key
from ws_guard.testing import ManualClock, ScriptedWebSocket


def by_agent(conn: RuleContext) -> str | None:
    return conn.header("user-agent")


async def offend(guard: Guard, agent: str) -> None:
    ws = ScriptedWebSocket(
        WSGuardMiddleware(echo, guard=guard),
        "/ws",
        client=("203.0.113.5", 4000),
        headers=[(b"user-agent", agent.encode())],
    )
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.send_text("bad")
    await ws.expect("websocket.close", code=1008, reason="content:no_bad")
    await ws.disconnect()
    await ws.finished()


async def test_a_long_key_from_a_header_is_kept_as_its_digest() -> None:
    ban = rules.AutoBan(after=1, within=60, ban=600, key=by_agent)
    content = rules.Content(lambda m: "bad" not in m, name="no_bad")
    guard = Guard(rules=[ban, content], clock=ManualClock())
    agents = [f"agent-{i}-" + "x" * 8000 for i in range(3)]
    for agent in agents:
        await offend(guard, agent)
    digests = ["sha256:" + hashlib.sha256(a.encode()).hexdigest()[:32] for a in agents]
    assert sorted(b.key for b in await guard.bans()) == sorted(digests)
    assert await guard.unban(digests[0]) == 1  # the listed key lifts it


def test_short_keys_are_unchanged_and_long_ones_never_raise() -> None:
    assert bounded_key("203.0.113.5") == "203.0.113.5"
    assert bounded_key("k" * MAX_USER_KEY) == "k" * MAX_USER_KEY
    assert bounded_key("k" * (MAX_USER_KEY + 1)).startswith("sha256:")
    assert len(bounded_key("\ud800" * 500)) == len("sha256:") + 32
