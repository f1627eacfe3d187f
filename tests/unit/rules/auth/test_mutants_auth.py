"""``JWTAuth(max_token_bytes=N)`` at its edge, on every path a token arrives by.

A token of exactly N bytes is verified and admitted; N + 1 is refused with
1008 ``token_invalid`` before PyJWT sees it. Every source (query, header,
first message, bare or in JSON, and a refresh message on an open
connection) is checked, since each reaches the same limit by its own path.
In process, with real PyJWT and real HS256 tokens.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.apps import echo
from tests.support.jwt_keys import SECRET, mint
from ws_guard import Guard, WSGuardMiddleware, rules
from ws_guard.testing import ScriptedWebSocket


def tokens_of_adjacent_lengths(minimum: int = 300) -> tuple[int, str, str]:
    """``(n, a token of n bytes, a token of n + 1 bytes)``, both valid for alice.

    base64url grows by 1 or 2 characters per padding byte, so some lengths
    are skipped; the first n >= *minimum* with both lengths is taken.
    """
    by_length = {len(token): token for token in (mint(pad="x" * k) for k in range(200, 320))}
    for n in sorted(by_length):
        if n >= minimum and n + 1 in by_length:
            return n, by_length[n], by_length[n + 1]
    raise AssertionError("no adjacent token lengths")  # pragma: no cover


LIMIT, AT_LIMIT, OVER_LIMIT = tokens_of_adjacent_lengths()


def auth(source: Any) -> rules.JWTAuth:
    return rules.JWTAuth(SECRET, algorithms=["HS256"], token=source, max_token_bytes=LIMIT)


async def admitted_or_closed(ws: ScriptedWebSocket) -> dict[str, Any]:
    """Send "ping": the echo (admitted) or the close ws_guard sent instead."""
    await ws.send_text("ping")
    reply = await ws.next()
    if reply["type"] == "websocket.send":
        assert reply["text"] == "ping"
        await ws.disconnect()
    await ws.finished()
    return reply


def handshake_client(source: str, token: str, app: Any) -> ScriptedWebSocket:
    if source == "query":
        return ScriptedWebSocket(app, query_string=f"token={token}".encode())
    return ScriptedWebSocket(app, headers=[(b"authorization", f"Bearer {token}".encode())])


@pytest.mark.parametrize("source", ["query", "header"])
@pytest.mark.parametrize(
    ("token", "expected"),
    [
        pytest.param(AT_LIMIT, None, id="exactly-max"),
        pytest.param(OVER_LIMIT, "token_invalid", id="max-plus-one"),
    ],
)
async def test_handshake_token_at_and_over_max_token_bytes(
    source: str, token: str, expected: str | None
) -> None:
    assert (len(AT_LIMIT), len(OVER_LIMIT)) == (LIMIT, LIMIT + 1)
    rule = auth(rules.from_query("token") if source == "query" else rules.from_header())
    guard = Guard(rules=[rule])
    ws = handshake_client(source, token, WSGuardMiddleware(echo, guard=guard))
    await ws.connect()
    await ws.expect("websocket.accept")
    reply = await admitted_or_closed(ws)
    snap = guard.metrics.snapshot()
    if expected is None:
        assert reply["type"] == "websocket.send"
        assert snap.closes_by_code == {1000: 1}
    else:
        assert reply == {"type": "websocket.close", "code": 1008, "reason": expected}
        assert snap.closes_by_rule == {expected: 1}


@pytest.mark.parametrize("envelope", ["bare", "json"])
@pytest.mark.parametrize(
    ("token", "expected"),
    [
        pytest.param(AT_LIMIT, None, id="exactly-max"),
        pytest.param(OVER_LIMIT, "token_invalid", id="max-plus-one"),
    ],
)
async def test_first_message_token_at_and_over_max_token_bytes(
    envelope: str, token: str, expected: str | None
) -> None:
    guard = Guard(rules=[auth(rules.from_first_message(5.0))])
    ws = ScriptedWebSocket(WSGuardMiddleware(echo, guard=guard))
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.send_text(token if envelope == "bare" else json.dumps({"token": token}))
    reply = await admitted_or_closed(ws)  # the token message itself never reaches the app
    if expected is None:
        assert reply == {"type": "websocket.send", "text": "ping"}
    else:
        assert reply == {"type": "websocket.close", "code": 1008, "reason": expected}
        assert guard.metrics.snapshot().closes_by_rule == {expected: 1}


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        pytest.param(AT_LIMIT, None, id="exactly-max"),
        pytest.param(OVER_LIMIT, "token_invalid", id="max-plus-one"),
    ],
)
async def test_refresh_token_at_and_over_max_token_bytes(token: str, expected: str | None) -> None:
    guard = Guard(rules=[auth(rules.from_query("token"))])
    # The handshake token expires sooner, so the refresh moves the deadline on
    # (a refresh that does not is token_stale).
    ws = ScriptedWebSocket(
        WSGuardMiddleware(echo, guard=guard), query_string=f"token={mint(exp_in=600)}".encode()
    )
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.send_text(json.dumps({"type": "auth.refresh", "token": token}))
    reply = await admitted_or_closed(ws)  # a refresh is consumed: the next reply is the echo
    if expected is None:
        assert reply == {"type": "websocket.send", "text": "ping"}
        assert guard.metrics.snapshot().closes_by_code == {1000: 1}
    else:
        assert reply == {"type": "websocket.close", "code": 1008, "reason": expected}
        assert guard.metrics.snapshot().closes_by_rule == {expected: 1}
