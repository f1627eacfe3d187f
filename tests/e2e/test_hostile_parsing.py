"""Hostile payloads end to end: real uvicorn (all three WebSocket stacks), the real client.

Each payload that used to raise out of ``json.loads`` or PyJWT into the app's
``receive()`` now earns a close with the rule's code and reason, and the app
(a careless one that swallows exceptions and reads on) never receives a
later message.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.asyncio.client import connect

from tests.support.jwt_keys import SECRET, mint
from tests.support.servers import UVICORN_WS, serve
from tests.support.sites import Router, Site, closed_by_server
from ws_guard import rules
from ws_guard.types import Receive, Scope, Send

pytestmark = pytest.mark.e2e

DEPTH = 3000  # 6 KB of "[" and "]": past CPython's default recursion limit
NESTED = "[" * DEPTH + "]" * DEPTH
NESTED_OBJECTS = '{"a":' * 1400 + "1" + "}" * 1400  # 8.4 KB: within the refresh envelope
BIG_INT = "1" * 5000  # past sys.get_int_max_str_digits()
#: 64 KB: an unclosed string of escaped quotes behind enough brackets to be scanned
#: for depth; the scan once took 20 s of the server's event loop for it.
UNCLOSED = "[" * 65 + '"' + '\\"' * 32_000


@pytest.fixture(scope="module", params=UVICORN_WS)
def site(request: pytest.FixtureRequest) -> Iterator[Site]:
    router = Router()
    with serve(router, request.param) as server:  # type: ignore[arg-type]
        yield Site(request.param, server, router)


class Careless:
    """An app that catches every exception from receive() and reads on; records what it got."""

    def __init__(self) -> None:
        self.seen: list[Any] = []
        self.ended = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        try:
            while True:
                try:
                    message = await receive()
                except Exception as exc:  # what a careless app does
                    self.seen.append(repr(exc))
                    continue
                self.seen.append(message)
                if message["type"] == "websocket.disconnect":
                    return
        finally:
            self.ended = True

    async def finished(self, timeout: float = 5.0) -> list[Any]:
        deadline = time.monotonic() + timeout
        while not self.ended:  # the app runs on the server's thread
            if time.monotonic() > deadline:
                raise AssertionError(f"the app never ended: {self.seen}")
            await asyncio.sleep(0.01)
        return self.seen


async def closes(url: str, *frames: str | bytes, **options: Any) -> tuple[int, str]:
    async with connect(url, open_timeout=5, max_size=None, **options) as ws:
        for frame in frames:
            await ws.send(frame)
        assert await closed_by_server(ws) == []
        assert ws.close_code is not None
        return ws.close_code, ws.close_reason or ""


FIRST_MESSAGES = {
    "nested-arrays": '{"token": ' + NESTED + "}",
    "nested-objects": '{"token": ' + NESTED_OBJECTS + "}",
    "huge-integer": '{"token": ' + BIG_INT + "}",
    "nan": '{"token": NaN}',
    "infinity": '{"token": Infinity}',
    "not-an-object": NESTED,
    "token-not-a-string": '{"token": ["a.b.c"]}',
    "lone-surrogate": '{"token": "\\ud800.a.b"}',
    "not-utf8": b"\xff\xfe\x80" * 10,
}


@pytest.mark.parametrize("payload", FIRST_MESSAGES.values(), ids=FIRST_MESSAGES.keys())
async def test_a_hostile_first_message_closes_token_invalid(
    site: Site, payload: str | bytes
) -> None:
    app = Careless()
    rule = rules.JWTAuth(SECRET, algorithms=["HS256"], token=rules.from_first_message(5))
    url, guard = site.mount(app, rules=[rule])
    assert await closes(url, payload, "later") == (1008, "token_invalid")
    assert await app.finished() == [
        {"type": "websocket.disconnect", "code": 1008, "reason": "token_invalid"}
    ]
    snap = await site.wait_for(guard, lambda s: s.active_connections == 0)
    assert snap.closes_by_rule == {"token_invalid": 1}


REFRESH_TOKENS = {
    "nested-arrays": NESTED,
    "nested-objects": NESTED_OBJECTS,
    "huge-integer": BIG_INT,
    "nan": "NaN",
    "not-a-string": "42",
    "lone-surrogate": '"\\ud800.a.b"',
}


@pytest.mark.parametrize("token", REFRESH_TOKENS.values(), ids=REFRESH_TOKENS.keys())
async def test_a_hostile_refresh_closes_token_invalid(site: Site, token: str) -> None:
    app = Careless()
    rule = rules.JWTAuth(SECRET, algorithms=["HS256"], token=rules.from_query("token"))
    url, _ = site.mount(app, rules=[rule])
    refresh = '{"type": "auth.refresh", "token": ' + token + "}"
    assert await closes(f"{url}?token={mint('alice')}", refresh, "later") == (
        1008,
        "token_invalid",
    )
    assert await app.finished() == [
        {"type": "websocket.disconnect", "code": 1008, "reason": "token_invalid"}
    ]


JSON_PAYLOADS = {
    "nested-arrays": NESTED,
    "nested-objects": NESTED_OBJECTS,
    "huge-integer": BIG_INT,
    "nan": '{"x": NaN}',
    "infinity": "[Infinity]",
    "not-utf8": b'{"x": "\xff"}',
    "unclosed-escaped-quotes": UNCLOSED,
}


@pytest.mark.parametrize("payload", JSON_PAYLOADS.values(), ids=JSON_PAYLOADS.keys())
async def test_json_rule_closes_with_its_name(site: Site, payload: str | bytes) -> None:
    app = Careless()
    url, _ = site.mount(app, rules=[rules.Json(name="envelope")])
    assert await closes(url, json.dumps({"ok": 1}), payload, "later") == (1008, "content:envelope")
    assert await app.finished() == [
        {"type": "websocket.receive", "text": '{"ok": 1}'},
        {"type": "websocket.disconnect", "code": 1008, "reason": "content:envelope"},
    ]


async def test_a_raising_content_check_closes_1011(site: Site) -> None:
    app = Careless()
    # The user's bug: int() of text that is not a number raises ValueError.
    check = rules.Content(lambda text: int(text) >= 0, name="mine")
    url, guard = site.mount(app, rules=[check])
    assert await closes(url, NESTED, "later") == (1011, "internal_error")
    assert await app.finished() == [
        {"type": "websocket.disconnect", "code": 1011, "reason": "internal_error"}
    ]
    snap = await site.wait_for(guard, lambda s: s.active_connections == 0)
    assert snap.closes_by_code == {1011: 1}


async def test_a_json_kind_reads_a_hostile_string_without_stalling_the_server(site: Site) -> None:
    app = Careless()
    kind = rules.MessageRate("1/minute", match=rules.json_type("chat"), name="chat")
    url, _ = site.mount(app, rules=[kind])
    chat = json.dumps({"type": "chat"})
    started = time.monotonic()
    # Each frame waits at most 5 s for the next: the hostile one once held the loop 20 s.
    assert await closes(url, UNCLOSED, chat, chat) == (1008, "rate_limited:chat; retry-after=60")
    assert time.monotonic() - started < 5.0
    seen = await app.finished()
    assert seen[:2] == [
        {"type": "websocket.receive", "text": UNCLOSED},  # no chat: it passes uncounted
        {"type": "websocket.receive", "text": chat},
    ]
