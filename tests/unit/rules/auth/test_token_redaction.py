"""Handshake tokens never reach the app: every copy in the scope is redacted, the rest kept."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.asyncio.client import connect

from tests.support.apps import http_ok
from tests.support.backends import asyncio_only
from tests.support.jwt_keys import SECRET, mint
from tests.support.servers import UVICORN_WS, ServerThread, serve
from ws_guard import ConfigurationError, Guard, WSGuardMiddleware, rules
from ws_guard.rules.auth.redaction import redact_query, remove_cookie
from ws_guard.testing import ScriptedWebSocket
from ws_guard.types import Receive, Scope, Send


async def scope_echo(scope: Scope, receive: Receive, send: Send) -> None:
    """Accept and send the request as the app sees it, as JSON; end on disconnect."""
    if scope["type"] != "websocket":
        await http_ok(scope, receive, send)
        return
    await receive()
    await send({"type": "websocket.accept"})
    seen = {
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]],
        "query_string": scope["query_string"].decode("latin-1"),
        "raw_path": (scope.get("raw_path") or b"").decode("latin-1"),
        "path": scope["path"],
        "subprotocols": list(scope["subprotocols"]),
    }
    await send({"type": "websocket.send", "text": json.dumps(seen)})
    while (await receive())["type"] != "websocket.disconnect":
        pass


def make_guard(**redact: bool) -> Guard:
    sources = [
        rules.from_query("token", redact=redact.get("query", True)),
        rules.from_header(redact=redact.get("header", True)),
        rules.from_cookie("session", redact=redact.get("cookie", True)),
        rules.from_subprotocol(redact=redact.get("subprotocol", True)),
    ]
    return Guard(
        rules=[
            rules.AllowedOrigins(["https://app.example"], allow_missing=True),
            rules.JWTAuth(SECRET, algorithms=["HS256"], token=sources),
        ],
        paths=["/ws"],  # /raw is left unguarded: the baseline of what the app would see
    )


@pytest.fixture(scope="module", params=UVICORN_WS)
def server(request: pytest.FixtureRequest) -> Iterator[ServerThread]:
    with serve(WSGuardMiddleware(scope_echo, guard=make_guard()), request.param) as thread:
        yield thread


TOKEN = mint("secret-holder")
SECOND = mint("second-copy")
OTHER = [("X-Trace", "abc; token=not-this"), ("User-Agent", "redaction-test/1")]


async def seen(url: str, headers: list[tuple[str, str]], subprotocols: list[str]) -> dict[str, Any]:
    async with connect(
        url,
        proxy=None,
        additional_headers=headers,
        subprotocols=subprotocols or None,  # type: ignore[arg-type]
        user_agent_header=None,
    ) as ws:
        report: dict[str, Any] = json.loads(await ws.recv())
    return report


def without_key(headers: list[list[str]]) -> list[list[str]]:
    """The headers minus the one a client draws anew for every handshake."""
    return [h for h in headers if h[0] != "sec-websocket-key"]


# (query, extra headers, subprotocols) a client sends, and what the app must see instead.
CASES: dict[str, tuple[str, list[tuple[str, str]], list[str], dict[str, Any]]] = {
    "query": (
        f"room=7&token={TOKEN}&x=",
        [],
        [],
        {"query_string": "room=7&token=redacted&x="},
    ),
    "header": (
        "room=7",
        [("Authorization", f"Bearer {TOKEN}")],
        [],
        {"authorization": "Bearer redacted"},
    ),
    "cookie": (
        "room=7",
        [("Cookie", f"theme=dark; session={TOKEN}; lang=en")],
        [],
        {"cookie": "theme=dark; lang=en"},
    ),
    "subprotocol": (
        "room=7",
        [],
        ["chat", "access_token", TOKEN],
        {"sec-websocket-protocol": "chat, access_token", "subprotocols": ["chat", "access_token"]},
    ),
    # The token in two places: both copies go. (Two different values under one
    # name are token_invalid: tests/e2e/test_security_keys.py.)
    "query twice": (
        f"token={TOKEN}&room=7&token={TOKEN}",
        [],
        [],
        {"query_string": "token=redacted&room=7&token=redacted"},
    ),
    "query and header": (
        f"room=7&token={TOKEN}",
        [("Authorization", f"bearer {SECOND}")],
        [],
        {"query_string": "room=7&token=redacted", "authorization": "bearer redacted"},
    ),
    "two cookie lines": (
        "room=7",
        [("Cookie", f"session={TOKEN}"), ("Cookie", f"a=1; session={TOKEN}")],
        [],
        {"cookie": ["a=1"]},
    ),
    "subprotocol and cookie": (
        "room=7",
        [("Cookie", f"session={SECOND}; theme=dark")],
        ["access_token", TOKEN],
        {
            "sec-websocket-protocol": "access_token",
            "subprotocols": ["access_token"],
            "cookie": "theme=dark",
        },
    ),
}


@pytest.mark.e2e
@asyncio_only  # the websockets client it drives runs on asyncio
@pytest.mark.parametrize("case", CASES)
async def test_the_app_sees_no_token_and_everything_else_unchanged(
    server: ServerThread, case: str
) -> None:
    query, token_headers, subprotocols, changes = CASES[case]
    headers = OTHER + token_headers
    guarded = await seen(f"{server.url}/ws?{query}", headers, subprotocols)
    baseline = await seen(f"{server.url}/raw?{query}", headers, subprotocols)

    dump = json.dumps(guarded)
    assert TOKEN not in dump
    assert SECOND not in dump
    # What the unguarded app sees, with exactly the token's copies edited.
    expected = without_key(baseline["headers"])
    for name, value in changes.items():
        if name in ("query_string", "subprotocols"):
            continue
        values = iter(value if isinstance(value, list) else [value])
        edited: list[list[str]] = []
        for header in expected:
            if header[0] != name:
                edited.append(header)
            else:
                new = next(values, None)
                if new is not None:
                    edited.append([name, new])
        expected = edited
    assert without_key(guarded["headers"]) == expected
    assert guarded["query_string"] == changes.get("query_string", baseline["query_string"])
    assert guarded["subprotocols"] == changes.get("subprotocols", baseline["subprotocols"])
    assert guarded["raw_path"] == "/ws"
    assert baseline["raw_path"] == "/raw"
    assert ["x-trace", "abc; token=not-this"] in guarded["headers"]


@pytest.mark.e2e
@asyncio_only  # the websockets client it drives runs on asyncio
async def test_redact_false_keeps_the_header_copies() -> None:
    guard = make_guard(header=False, cookie=False, subprotocol=False)
    with serve(WSGuardMiddleware(scope_echo, guard=guard)) as thread:
        report = await seen(
            f"{thread.url}/ws",
            [("Authorization", f"Bearer {TOKEN}"), ("Cookie", f"session={SECOND}")],
            ["access_token", TOKEN],
        )
    assert ["authorization", f"Bearer {TOKEN}"] in report["headers"]
    assert ["cookie", f"session={SECOND}"] in report["headers"]
    assert ["sec-websocket-protocol", f"access_token, {TOKEN}"] in report["headers"]
    assert report["subprotocols"] == ["access_token"]  # never an accept that names the token


async def test_a_raw_path_that_carries_the_query_is_redacted_too() -> None:
    """ASGI's raw_path has no query, but a server may keep the whole request target there."""
    ws = ScriptedWebSocket(
        WSGuardMiddleware(scope_echo, guard=make_guard()),
        query_string=f"a=1&token={TOKEN}".encode(),
    )
    ws.scope["raw_path"] = f"/ws?a=1&t%6Fken={TOKEN}".encode()  # an encoded name too
    await ws.connect()
    await ws.expect("websocket.accept")
    report = json.loads((await ws.next())["text"])
    await ws.disconnect()
    await ws.finished()
    assert report["raw_path"] == "/ws?a=1&t%6Fken=redacted"
    assert report["query_string"] == "a=1&token=redacted"


@pytest.mark.parametrize(
    ("lines", "kept"),
    [
        ([b"session=T"], []),
        ([b"a=1; session=T"], [b"a=1"]),
        ([b"session=T; a=1;b=2"], [b"a=1;b=2"]),
        ([b"a=1;  session=T ;b=2"], [b"a=1;b=2"]),
        ([b'session="T"; a=1'], [b"a=1"]),
        ([b"broken; session=T"], [b"broken"]),
        ([b"session=T", b"a=1", b"session=U; b=2"], [b"a=1", b"b=2"]),
        ([b"sessions=1; xsession=2"], [b"sessions=1; xsession=2"]),  # other names stay
    ],
)
async def test_cookie_removal_keeps_other_cookies_byte_identical(
    lines: list[bytes], kept: list[bytes]
) -> None:
    ws = ScriptedWebSocket(
        WSGuardMiddleware(scope_echo, guard=make_guard()),
        headers=[(b"x-before", b"1"), *((b"cookie", line) for line in lines), (b"x-after", b"2")],
        query_string=f"token={TOKEN}".encode(),
    )
    await ws.connect()
    await ws.expect("websocket.accept")
    report = json.loads((await ws.next())["text"])
    await ws.disconnect()
    await ws.finished()
    assert report["headers"] == [
        ["x-before", "1"],
        *(["cookie", line.decode()] for line in kept),
        ["x-after", "2"],
    ]


async def test_only_the_sources_scheme_is_redacted() -> None:
    ws = ScriptedWebSocket(
        WSGuardMiddleware(scope_echo, guard=make_guard()),
        headers=[
            (b"authorization", b"Basic dXNlcjpwdw=="),
            (b"Authorization", f"Bearer {TOKEN}".encode()),
        ],
        query_string=f"token={SECOND}".encode(),
    )
    await ws.connect()
    await ws.expect("websocket.accept")
    report = json.loads((await ws.next())["text"])
    await ws.disconnect()
    await ws.finished()
    # The Basic line is someone else's; the second line's Bearer token is found
    # by no source (only the first line is read) and still redacted.
    assert report["headers"] == [
        ["authorization", "Basic dXNlcjpwdw=="],
        ["Authorization", "Bearer redacted"],
    ]


@pytest.mark.parametrize("source", [rules.from_header, rules.from_cookie, rules.from_subprotocol])
def test_redact_must_be_a_bool(source: Any) -> None:
    args = ("session",) if source is rules.from_cookie else ()
    with pytest.raises(ConfigurationError, match="'no'"):
        source(*args, redact="no")
    with pytest.raises(ConfigurationError, match="'no'"):
        rules.from_query(redact="no")  # type: ignore[arg-type]


NAMES = st.sampled_from(["session", "sess", "Session", "a", "theme", "session2"])
VALUES = st.from_regex(r"[A-Za-z0-9._\-]{0,12}", fullmatch=True)
SPACES = st.sampled_from(["", " ", "  "])


@given(st.lists(st.lists(st.tuples(SPACES, NAMES, VALUES), min_size=1, max_size=4), max_size=3))
def test_cookie_removal_drops_exactly_the_sources_pairs(
    lines: list[list[tuple[str, str, str]]],
) -> None:
    raw = [";".join(f"{sp}{n}={v}" for sp, n, v in pairs).encode() for pairs in lines]
    scope: dict[str, Any] = {"headers": [(b"x", b"1"), *((b"cookie", line) for line in raw)]}
    remove_cookie(scope, "session")
    expected = []  # the other pairs, byte for byte; a line left empty is gone
    for pairs in lines:
        kept = [f"{sp}{n}={v}" for sp, n, v in pairs if n != "session"]
        if kept and len(kept) < len(pairs):
            kept[0] = kept[0].lstrip()  # no leading space where the removed pair stood
        if kept:  # a line without the cookie is left as it was
            expected.append((b"cookie", ";".join(kept).encode()))
    assert scope["headers"] == [(b"x", b"1"), *expected]


@given(st.lists(st.tuples(NAMES, VALUES), max_size=6))
def test_query_redaction_touches_only_the_sources_parameter(pairs: list[tuple[str, str]]) -> None:
    query = "&".join(f"{n}={v}" for n, v in pairs).encode()
    scope: dict[str, Any] = {"query_string": query, "raw_path": b"/ws?" + query}
    redact_query(scope, "session")
    expected = "&".join(f"{n}={'redacted' if n == 'session' else v}" for n, v in pairs).encode()
    assert scope["query_string"] == (expected if query else b"")
    assert scope["raw_path"] == b"/ws?" + expected
