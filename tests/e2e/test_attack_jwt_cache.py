"""Attacks on JWTAuth(verified_cache=N) end to end: query encodings and shared claims.

Real uvicorn on 127.0.0.1 and the real ``websockets`` client. The cache is
keyed by the token text the source read, so every query spelling of one
token is one entry and one signature check; a spelling that yields another
text (or two different values) is not that entry. Each connection's claims
are its own: an app that mutates the nested claims of one connection does
not change what the next connection with the same token reads.
"""

from __future__ import annotations

import json

import pytest
from websockets.asyncio.client import connect

from tests.e2e.test_jwt import closed_with, report
from tests.support.apps import http_ok
from tests.support.jwt_apps import whoami
from tests.support.jwt_keys import SECRET, mint
from tests.support.servers import serve
from ws_guard import Guard, WSGuardMiddleware, connection_info, rules
from ws_guard.types import Receive, Scope, Send

pytestmark = pytest.mark.e2e


def cached_guard() -> tuple[Guard, rules.JWTAuth]:
    rule = rules.JWTAuth(
        SECRET, algorithms=["HS256"], token=rules.from_query("token"), verified_cache=10
    )
    return Guard(rules=[rule], paths=["/ws"]), rule


async def test_every_query_spelling_of_one_token_is_one_entry() -> None:
    guard, rule = cached_guard()
    token = mint("alice")
    dotted = token.replace(".", "%2E")
    spellings = [
        f"token={token}",
        f"token={dotted}",  # the same text once percent-decoded
        f"tok%65n={token}",  # the name percent-encoded
        f"a=1&token={token}&token={dotted}",  # repeated, the same value
        f"token={token}&b=%ff%zz&=x&;c",  # odd neighbours (invalid UTF-8, empty key)
    ]
    with serve(WSGuardMiddleware(whoami, guard=guard)) as thread:
        for query in spellings:
            async with connect(f"{thread.url}/ws?{query}", proxy=None) as ws:
                assert (await report(ws))["sub"] == "alice", query
        refused = [
            f"token={token}&token={mint('bob')}",  # two different values: neither is used
            f"token={token}+",  # '+' decodes to a space: another text
            f"token={token[:-1]}",
        ]
        closes = []
        for query in refused:
            async with connect(f"{thread.url}/ws?{query}", proxy=None) as ws:
                code, reason, _ = await closed_with(ws)
                closes.append((code, reason))
    assert closes == [(1008, "token_invalid")] * 3
    cache = rule.verifier.cache
    assert cache is not None
    assert len(cache) == 1
    assert cache.hits == len(spellings) - 1


async def mutating(scope: Scope, receive: Receive, send: Send) -> None:
    """Report the connection's ``roles`` claim, then append ``admin`` to it in place."""
    if scope["type"] != "websocket":
        await http_ok(scope, receive, send)
        return
    await receive()
    await send({"type": "websocket.accept"})
    info = connection_info(scope)
    assert info is not None
    assert info.claims is not None
    roles = info.claims["roles"]
    await send({"type": "websocket.send", "text": json.dumps(roles)})
    roles.append("admin")
    info.claims["profile"]["tier"] = "gold"
    await send({"type": "websocket.send", "text": json.dumps(info.claims["profile"])})
    while (await receive())["type"] != "websocket.disconnect":
        pass


async def test_an_app_that_mutates_nested_claims_changes_no_other_connection() -> None:
    guard, rule = cached_guard()
    token = mint("alice", roles=["reader"], profile={"tier": "free"})
    with serve(WSGuardMiddleware(mutating, guard=guard)) as thread:
        for _ in range(3):
            async with connect(f"{thread.url}/ws?token={token}", proxy=None) as ws:
                assert json.loads(await ws.recv()) == ["reader"]
                assert json.loads(await ws.recv()) == {"tier": "gold"}
    cache = rule.verifier.cache
    assert cache is not None
    assert (cache.hits, cache.misses) == (2, 1)
