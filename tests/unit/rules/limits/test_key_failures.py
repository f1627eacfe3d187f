"""A key callable that raises or returns no key: 1011 under the rule, never an exception.

A key such as ``lambda conn: conn.claims["tenant"]`` raises for a token
without that claim, so a client could make it raise; one that returns a
list made the memory storage's dict raise ``TypeError``. Either escaped from
the handshake (``ConnectRate``, ``MaxConnectionsPerKey``, a shared
``MessageRate``) or from the app's ``receive()``. Now it closes 1011
``internal_error`` counted under the rule, as a raising tier callable does;
the error is logged once per rule. An ``int`` key is its decimal string.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tests.support.apps import echo
from tests.support.rate_helpers import Clock
from ws_guard import Guard, WSGuardMiddleware, rules
from ws_guard.testing import ScriptedWebSocket


def tenant(conn: Any) -> Any:
    return conn.claims["tenant"]  # no claims here: TypeError, as a missing claim's KeyError


BAD_KEYS: dict[str, tuple[Any, str]] = {
    "raises": (tenant, "key raised TypeError"),
    "list": (lambda conn: ["a"], "key returned a list, not a string"),
    "bytes": (lambda conn: b"a", "key returned a bytes, not a string"),
    "float": (lambda conn: 1.5, "key returned a float, not a string"),
    "bool": (lambda conn: True, "key returned a bool, not a string"),
}

#: Rules that read the key at the handshake.
AT_HANDSHAKE: dict[str, Any] = {
    "connect-rate": lambda key: rules.ConnectRate("10/second", key=key),
    "cap": lambda key: rules.MaxConnectionsPerKey(3, key=key),
}
#: Rules that read it at the first message (memory storage: no handshake read).
AT_FIRST_MESSAGE: dict[str, Any] = {
    "message-rate": lambda key: rules.MessageRate("10/second", key=key),
    "message-rates": lambda key: rules.MessageRate(["10/second", "100/minute"], key=key),
    "kind-rate": lambda key: rules.MessageRate(
        "10/second", key=key, match=rules.json_type("chat"), name="chat"
    ),
    "warned-rate": lambda key: rules.MessageRate("10/second", key=key, warn_at=0.5),
    "tiered-rate": lambda key: rules.MessageRate(lambda info: "10/second", key=key),
    "byte-rate": lambda key: rules.ByteRate("1000/second", key=key),
    "byte-rates": lambda key: rules.ByteRate(["1000/second", "9000/minute"], key=key),
    "warned-byte-rate": lambda key: rules.ByteRate("1000/second", key=key, warn_at=0.5),
}


async def _connect(app: Any) -> ScriptedWebSocket:
    ws = ScriptedWebSocket(app, client=("10.0.0.1", 40000))
    await ws.connect()
    await ws.expect("websocket.accept")
    return ws


@pytest.mark.parametrize("bad", sorted(BAD_KEYS))
@pytest.mark.parametrize("rule", sorted(AT_HANDSHAKE))
async def test_a_bad_key_at_the_handshake_closes_1011_and_logs_once(
    rule: str, bad: str, caplog: pytest.LogCaptureFixture
) -> None:
    key, logged = BAD_KEYS[bad]
    guard = Guard(rules=[AT_HANDSHAKE[rule](key)], clock=Clock(0.0))
    app = WSGuardMiddleware(echo, guard=guard)
    with caplog.at_level(logging.ERROR, logger="ws_guard"):
        for _ in range(2):
            ws = await _connect(app)
            await ws.expect("websocket.close", code=1011, reason="internal_error")
            await ws.finished()
    errors = [r.getMessage() for r in caplog.records if " key " in r.getMessage()]
    assert len(errors) == 1, errors
    assert logged in errors[0]
    snap = guard.metrics.snapshot()
    assert snap.closes_by_rule == {"internal_error": 2}
    assert snap.closes_by_code == {1011: 2}


@pytest.mark.parametrize("bad", sorted(BAD_KEYS))
@pytest.mark.parametrize("rule", sorted(AT_FIRST_MESSAGE))
async def test_a_bad_key_at_the_first_message_closes_1011_and_the_app_sees_no_exception(
    rule: str, bad: str, caplog: pytest.LogCaptureFixture
) -> None:
    key, logged = BAD_KEYS[bad]
    made = AT_FIRST_MESSAGE[rule](key)
    guard = Guard(rules=[made], clock=Clock(0.0))
    await guard.startup()
    try:
        app = WSGuardMiddleware(echo, guard=guard)
        with caplog.at_level(logging.ERROR, logger="ws_guard"):
            ws = await _connect(app)
            await ws.send_text('{"type": "chat"}')
            await ws.expect("websocket.close", code=1011, reason="internal_error")
            await ws.finished()  # the echo app returned: receive() gave it a disconnect
        errors = [r.getMessage() for r in caplog.records if " key " in r.getMessage()]
        assert len(errors) == 1, errors
        assert logged in errors[0]
        # Under the rule's label: its name= when it has one (a kind's is required).
        assert guard.metrics.snapshot().closes_by_rule == {made.name or "internal_error": 1}
    finally:
        await guard.shutdown()


async def test_a_bad_key_in_shadow_mode_is_recorded_and_the_connection_lives() -> None:
    rule = rules.MaxConnectionsPerKey(1, key=tenant, enforce=False, name="tenant_cap")
    guard = Guard(rules=[rule], clock=Clock(0.0))
    app = WSGuardMiddleware(echo, guard=guard)
    ws = await _connect(app)
    await ws.send_text("hi")
    await ws.expect("websocket.send", text="hi")
    await ws.disconnect()
    await ws.finished()
    assert guard.metrics.snapshot().shadow_breaches_by_rule == {"tenant_cap": 1}


async def test_an_int_key_counts_as_its_decimal_string() -> None:
    guard = Guard(
        rules=[rules.MaxConnectionsPerKey(1, key=lambda conn: 7, name="by_seven")],
        clock=Clock(0.0),
    )
    app = WSGuardMiddleware(echo, guard=guard)
    first = await _connect(app)
    second = await _connect(app)
    await second.expect("websocket.close", code=1008, reason="too_many_connections")
    await second.finished()
    await first.disconnect()
    await first.finished()
    assert guard.metrics.snapshot().closes_by_rule == {"by_seven": 1}
