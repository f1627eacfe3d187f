"""Token sources in process: where the token is found, and where it is removed from."""

from __future__ import annotations

import json
import logging

import pytest

from tests.support.jwt_apps import whoami
from tests.support.jwt_keys import SECRET, mint
from ws_guard import Close, Guard, WSGuardMiddleware, rules
from ws_guard.rules import Rule, Stage
from ws_guard.testing import ScriptedWebSocket


def guarded(*sources: rules.TokenSource, extra: tuple[Rule, ...] = ()) -> WSGuardMiddleware:
    rule = rules.JWTAuth(SECRET, algorithms=["HS256"], token=list(sources))
    return WSGuardMiddleware(whoami, guard=Guard(rules=[*extra, rule]))


async def who(ws: ScriptedWebSocket) -> dict:
    """Connect, send one message, return the app's report; closes cleanly."""
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.send_text("hi")
    reply = await ws.next()
    if reply["type"] == "websocket.close":
        await ws.finished()
        return reply
    report: dict = json.loads(reply["text"])
    await ws.expect("websocket.send", text="hi")
    await ws.disconnect()
    await ws.finished()
    return report


async def test_query_token_is_found_and_redacted_in_place() -> None:
    token = mint("q")
    ws = ScriptedWebSocket(
        guarded(rules.from_query("access")), query_string=f"room=7&access={token}&x=".encode()
    )
    assert (await who(ws))["sub"] == "q"
    assert ws.scope["query_string"] == b"room=7&access=redacted&x="


async def test_query_token_redaction_can_be_turned_off() -> None:
    token = mint("q")
    ws = ScriptedWebSocket(
        guarded(rules.from_query("token", redact=False)), query_string=f"token={token}".encode()
    )
    assert (await who(ws))["sub"] == "q"
    assert ws.scope["query_string"] == f"token={token}".encode()


async def test_query_token_is_redacted_even_when_an_earlier_rule_rejects(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class RefuseAll(Rule):
        stage = Stage.CONNECT_RATE

        async def admit(self, conn: object) -> Close | None:
            return self.breach(1008, "connect_rate_limited")

    token = mint("q")
    ws = ScriptedWebSocket(
        guarded(rules.from_query("token"), extra=(RefuseAll(),)),
        query_string=f"token={token}".encode(),
    )
    caplog.set_level(logging.DEBUG)
    await ws.connect()
    await ws.expect("websocket.accept")
    await ws.expect("websocket.close", code=1008, reason="connect_rate_limited")
    await ws.finished()
    assert ws.scope["query_string"] == b"token=redacted"
    assert all(token not in r.getMessage() for r in caplog.records)
    assert any("path=/ws" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("header", "sub"),
    [
        ("Bearer {t}", "h"),
        ("bearer   {t}  ", "h"),
        ("Basic {t}", None),  # another scheme is no token
        ("Bearer", None),
        ("{t}", None),
    ],
)
async def test_bearer_header(header: str, sub: str | None) -> None:
    token = mint("h")
    ws = ScriptedWebSocket(
        guarded(rules.from_header()),
        headers=[(b"authorization", header.format(t=token).encode())],
    )
    report = await who(ws)
    if sub is None:
        assert report == {"type": "websocket.close", "code": 1008, "reason": "token_missing"}
    else:
        assert report["sub"] == sub


async def test_custom_header_without_scheme() -> None:
    ws = ScriptedWebSocket(
        guarded(rules.from_header("x-token", scheme=None)),
        headers=[(b"X-Token", mint("x").encode())],
    )
    assert (await who(ws))["sub"] == "x"


@pytest.mark.parametrize(
    "cookie",
    [
        "session={t}",
        "a=1; session={t}; b=2",
        'theme=dark;session="{t}"',
        "broken; session={t}",  # a malformed pair does not hide the rest
    ],
)
async def test_cookie(cookie: str) -> None:
    ws = ScriptedWebSocket(
        guarded(
            rules.from_cookie("session"),
            extra=(rules.AllowedOrigins(["null"], allow_missing=True),),
        ),
        headers=[(b"cookie", cookie.format(t=mint("c")).encode())],
    )
    assert (await who(ws))["sub"] == "c"


async def test_subprotocol_token_is_never_echoed() -> None:
    token = mint("s")
    ws = ScriptedWebSocket(guarded(rules.from_subprotocol()), subprotocols=["access_token", token])
    report = await who(ws)
    assert report["sub"] == "s"
    assert report["subprotocols"] == ["access_token"]  # the app never sees the token
    assert ws.sent[0] == {"type": "websocket.accept", "subprotocol": "access_token"}


async def test_subprotocol_keeps_the_apps_own_choice() -> None:
    async def graphql(scope: dict, receive: object, send: object) -> None:
        await receive()  # type: ignore[operator]
        await send({"type": "websocket.accept", "subprotocol": "graphql-ws"})  # type: ignore[operator]
        await send({"type": "websocket.close", "code": 1000})  # type: ignore[operator]

    guard = Guard(
        rules=[rules.JWTAuth(SECRET, algorithms=["HS256"], token=rules.from_subprotocol("jwt"))]
    )
    ws = ScriptedWebSocket(
        WSGuardMiddleware(graphql, guard=guard), subprotocols=["jwt", mint(), "graphql-ws"]
    )
    await ws.connect()
    await ws.expect("websocket.accept", subprotocol="graphql-ws")
    await ws.finished()


async def test_rejected_subprotocol_client_still_gets_a_valid_accept() -> None:
    """Browsers fail a handshake that picks no offered subprotocol (the client sees 1006)."""
    ws = ScriptedWebSocket(
        guarded(rules.from_subprotocol()), subprotocols=["access_token", "garbage"]
    )
    await ws.connect()
    await ws.expect("websocket.accept", subprotocol="access_token")
    await ws.expect("websocket.close", code=1008, reason="token_invalid")
    await ws.finished()


async def test_marker_without_token_is_missing() -> None:
    ws = ScriptedWebSocket(guarded(rules.from_subprotocol()), subprotocols=["access_token"])
    await ws.connect()
    await ws.expect("websocket.accept", subprotocol="access_token")
    await ws.expect("websocket.close", code=1008, reason="token_missing")
    await ws.finished()


async def test_first_present_source_wins() -> None:
    app = guarded(rules.from_query("token"), rules.from_header())
    both = ScriptedWebSocket(
        app,
        query_string=f"token={mint('query')}".encode(),
        headers=[(b"authorization", f"Bearer {mint('header')}".encode())],
    )
    assert (await who(both))["sub"] == "query"
    header_only = ScriptedWebSocket(
        app, headers=[(b"authorization", f"Bearer {mint('header')}".encode())]
    )
    assert (await who(header_only))["sub"] == "header"
    bad_first = ScriptedWebSocket(
        app,
        query_string=b"token=junk",
        headers=[(b"authorization", f"Bearer {mint('header')}".encode())],
    )
    assert (await who(bad_first))["reason"] == "token_invalid"
