"""A user's check or predicate that raises logs its traceback once per rule.

A client triggers it with every message that breaks the check; in shadow
mode the connection lives on to send the next one, so a log per failure was
a traceback per message (a flood of the kind ws_guard throttles for shadow
breaches and storage errors). Every failure is still counted under the rule.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tests.support.apps import echo
from tests.support.rate_helpers import Clock
from ws_guard import Guard, WSGuardMiddleware, rules
from ws_guard.testing import ScriptedWebSocket


def broken(value: Any) -> bool:
    raise KeyError("boom")  # the user's bug


RULES: dict[str, Any] = {
    "content": (lambda enforce: rules.Content(broken, name="mine", enforce=enforce), "content"),
    "json-validator": (lambda enforce: rules.Json(broken, name="mine", enforce=enforce), "content"),
    "match": (
        lambda enforce: rules.MessageRate("100/second", match=broken, name="mine", enforce=enforce),
        "match raised",
    ),
}


async def _connect(guard: Guard) -> ScriptedWebSocket:
    ws = ScriptedWebSocket(WSGuardMiddleware(echo, guard=guard), client=("10.0.0.1", 40000))
    await ws.connect()
    await ws.expect("websocket.accept")
    return ws


def _tracebacks(caplog: pytest.LogCaptureFixture, words: str) -> int:
    return sum(1 for r in caplog.records if words in r.getMessage() and r.exc_info)


@pytest.mark.parametrize("rule", sorted(RULES))
async def test_a_raising_check_in_shadow_mode_logs_one_traceback_for_many_messages(
    rule: str, caplog: pytest.LogCaptureFixture
) -> None:
    make, words = RULES[rule]
    made = make(False)
    guard = Guard(rules=[made], clock=Clock())
    ws = await _connect(guard)
    with caplog.at_level(logging.ERROR, logger="ws_guard"):
        for i in range(5):
            await ws.send_text(f'{{"n": {i}}}')
            await ws.expect("websocket.send", text=f'{{"n": {i}}}')  # shadow: it passes
    await ws.disconnect()
    await ws.finished()
    assert _tracebacks(caplog, words) == 1
    assert guard.metrics.snapshot().shadow_breaches_by_rule == {made.name: 5}


@pytest.mark.parametrize("rule", sorted(RULES))
async def test_a_raising_check_closes_each_connection_1011_with_one_traceback(
    rule: str, caplog: pytest.LogCaptureFixture
) -> None:
    make, words = RULES[rule]
    made = make(True)
    guard = Guard(rules=[made], clock=Clock())
    with caplog.at_level(logging.ERROR, logger="ws_guard"):
        for _ in range(3):
            ws = await _connect(guard)
            await ws.send_text('{"n": 1}')
            await ws.expect("websocket.close", code=1011, reason="internal_error")
            await ws.finished()
    assert _tracebacks(caplog, words) == 1
    assert guard.metrics.snapshot().closes_by_rule == {made.name: 3}
