"""``Connection.receive_text``: the leading text run's check written into the receive.

It must decide exactly as the run's own check (``TextState.check``) and the
rules one by one: same echoes, same close, same counts, for every message
kind, a breach, a raising content check and a check after the run.
"""

from __future__ import annotations

import functools
from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.apps import echo
from tests.support.backends import BACKENDS
from ws_guard import Guard, WSGuardMiddleware, rules
from ws_guard.rules.base import Rule
from ws_guard.testing import ManualClock, ScriptedWebSocket
from ws_guard.types import Receive, Scope, Send

SECRET = "s" * 32


def _no_z_raises_on_q(payload: str | bytes | None) -> bool:
    if isinstance(payload, str) and "q" in payload:
        raise ValueError("a broken content check")
    if payload is None:
        return True
    return (b"z" if isinstance(payload, bytes) else "z") not in payload  # type: ignore[operator]


async def _receive_name(guard: Guard) -> str:
    """The name of the receive the app gets."""
    seen: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(receive.__name__)
        await echo(scope, receive, send)

    ws = ScriptedWebSocket(WSGuardMiddleware(app, guard=guard))
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.disconnect()
    await ws.finished()
    assert len(seen) == 1, seen
    return seen[0]


@pytest.mark.parametrize(
    ("rule_list", "name"),
    [
        ([rules.MaxMessageSize(64), rules.Content(_no_z_raises_on_q, name="c")], "receive_text"),
        (
            [
                rules.MaxMessageSize(64),
                rules.MessageTypes(binary=False),
                rules.Content(_no_z_raises_on_q, name="c"),
                rules.MessageRate("3/second", key=rules.by_ip),  # a check after the run
            ],
            "receive_text",
        ),
        # A rate in the run, two content tests (Json is one), binary only,
        # no rules, a shadow content rule: the general receive.
        ([rules.Content(_no_z_raises_on_q, name="c"), rules.MessageRate("5/second")], "receive"),
        (
            [rules.Content(_no_z_raises_on_q, name="c"), rules.Pattern("x", name="p")],
            "receive",
        ),
        ([rules.MessageTypes(text=False), rules.Content(_no_z_raises_on_q, name="c")], "receive"),
        ([rules.Content(_no_z_raises_on_q, name="c"), rules.Json(name="j")], "receive"),
        ([], "receive"),
        ([rules.Content(_no_z_raises_on_q, name="c", enforce=False)], "receive"),
    ],
)
async def test_the_app_gets_receive_text_only_for_a_leading_text_run(
    rule_list: list[Rule], name: str
) -> None:
    assert await _receive_name(Guard(rules=rule_list)) == name


async def test_a_run_with_a_first_message_token_keeps_the_general_receive() -> None:
    auth = rules.JWTAuth(SECRET, algorithms=["HS256"], token=rules.from_first_message())
    guard = Guard(rules=[auth, rules.Content(_no_z_raises_on_q, name="c")])
    # The auth rule's check of every message makes the run's state a
    # general one: the app gets the general receive.
    assert await _receive_name(guard) == "receive"


async def _serve(
    rule_list: list[Rule], script: list[dict[str, Any]], *, fused: bool
) -> tuple[list[dict[str, Any]], Any]:
    clock = ManualClock(10.0)
    guard = Guard(rules=rule_list, clock=clock)
    if not fused:
        guard.plan.checks = tuple(guard.plan.checker_rules)  # rule by rule
        guard.plan.lead_run = None
    ws = ScriptedWebSocket(WSGuardMiddleware(echo, guard=guard))
    await ws.connect()
    for message in script:
        await ws._incoming.put(dict(message))
    await ws.disconnect()
    await ws.finished()
    snap = guard.metrics.snapshot()
    return ws.sent, (snap.closes_by_rule, snap.closes_by_code, snap.dropped_sends)


message = st.one_of(
    st.text(alphabet='abzq{}"1é😀', max_size=24).map(
        lambda t: {"type": "websocket.receive", "text": t}
    ),
    st.just({"type": "websocket.receive", "text": '{"a": 1}'}),
    st.binary(max_size=16).map(lambda b: {"type": "websocket.receive", "bytes": b}),
    st.just({"type": "websocket.receive", "text": None, "bytes": None}),
)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 40),
    st.booleans(),
    st.sampled_from(["none", "size", "rate"]),
    st.lists(message, min_size=1, max_size=12),
)
def test_receive_text_serves_like_rule_by_rule(
    backend: str, size: int, text_only: bool, after: str, script: list[dict[str, Any]]
) -> None:
    """Long text, binary, neither payload, a breach, a raising check, a check after the run."""

    def rule_list() -> list[Rule]:
        made: list[Rule] = [rules.MaxMessageSize(size)]
        if text_only:
            made.append(rules.MessageTypes(binary=False))
        made.append(rules.Content(_no_z_raises_on_q, name="noz"))
        if after == "size":  # out of the run's order: a check of its own after it
            made.append(rules.MaxMessageSize(max(1, size - 6)))
        elif after == "rate":  # a shared key: not a run's rate, a check of its own
            made.append(rules.MessageRate("3/second", key=rules.by_ip))
        return made

    assert anyio.run(_receive_name, Guard(rules=rule_list()), backend=backend) == "receive_text"
    fused = anyio.run(functools.partial(_serve, rule_list(), script, fused=True), backend=backend)
    reference = anyio.run(
        functools.partial(_serve, rule_list(), script, fused=False), backend=backend
    )
    assert fused == reference


async def test_a_breach_and_a_broken_check_close_with_their_own_codes() -> None:
    guard = Guard(rules=[rules.MaxMessageSize(64), rules.Content(_no_z_raises_on_q, name="noz")])
    ws = ScriptedWebSocket(WSGuardMiddleware(echo, guard=guard))
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.send_text("fine")
    await ws.expect("websocket.send", text="fine")
    await ws.send_text("zap")
    await ws.expect("websocket.close", code=1008, reason="content:noz")
    await ws.disconnect(1008)
    await ws.finished()
    ws = ScriptedWebSocket(WSGuardMiddleware(echo, guard=guard))
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.send_text("quiz")  # the check raises: ws_guard's fault line, 1011
    await ws.expect("websocket.close", code=1011)
    await ws.disconnect(1011)
    await ws.finished()
    assert guard.metrics.snapshot().closes_by_code == {1008: 1, 1011: 1}
