"""Per-kind and per-tier limits on real uvicorn with the real ``websockets`` client."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from websockets.asyncio.client import connect

from tests.e2e.test_rate import rejected, until
from tests.support.apps import echo
from tests.support.jwt_keys import SECRET, mint
from tests.support.rate_helpers import read_until_closed
from tests.support.servers import UVICORN_WS, serve
from ws_guard import ConnectionInfo, Guard, WSGuardMiddleware, rules

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.filterwarnings("ignore:The `websockets` implementation is deprecated"),
    pytest.mark.filterwarnings("ignore:websockets.legacy is deprecated"),
    pytest.mark.filterwarnings("ignore:remove second argument of ws_handler"),
]

CHAT = json.dumps({"type": "chat", "text": "hello"})
TYPING = json.dumps({"type": "typing"})


@pytest.mark.parametrize("kind", UVICORN_WS)
async def test_two_kinds_are_counted_independently(kind: str) -> None:
    guard = Guard(
        rules=[
            rules.MessageRate("5/minute", match=rules.json_type("typing"), name="typing"),
            rules.MessageRate("2/minute", match=rules.json_type("chat"), name="chat"),
        ]
    )
    with serve(WSGuardMiddleware(echo, guard=guard), kind) as server:
        async with connect(server.url + "/ws") as ws:
            # Sent back to back: 5 typing, 2 chat and 10 others pass, the third chat closes.
            sent = [TYPING, CHAT, TYPING, "hi", TYPING, CHAT, TYPING, TYPING]
            sent += ["plain"] * 10 + [CHAT, "after the close"]
            for text in sent:
                await ws.send(text)
            echoed, code, reason = await read_until_closed(ws)
        assert echoed == sent[:-2]
        assert code == 1008
        assert re.fullmatch(r"rate_limited:chat; retry-after=(59|60)", reason)
        snap = await until(server, guard, lambda s: s.active_connections == 0)
    assert snap.closes_by_rule == {"chat": 1}
    assert snap.closes_by_code == {1008: 1}


async def test_the_other_kind_closes_with_its_own_name() -> None:
    guard = Guard(
        rules=[
            rules.MessageRate("3/minute", match=rules.json_type("typing"), name="typing"),
            rules.MessageRate("2/minute", match=rules.json_type("chat"), name="chat"),
        ]
    )
    with serve(WSGuardMiddleware(echo, guard=guard)) as server:
        async with connect(server.url + "/ws") as ws:
            sent = [CHAT, TYPING, CHAT, TYPING, TYPING, TYPING]
            for text in sent:
                await ws.send(text)
            echoed, code, reason = await read_until_closed(ws)
    assert echoed == sent[:-1]
    assert code == 1008
    assert re.fullmatch(r"rate_limited:typing; retry-after=(59|60)", reason)


def plan_rate(info: ConnectionInfo) -> str:
    return "4/minute" if (info.claims or {}).get("plan") == "pro" else "2/minute"


def plan_connects(info: ConnectionInfo) -> str:
    return "3/minute" if (info.claims or {}).get("plan") == "pro" else "1/minute"


@pytest.mark.parametrize("kind", UVICORN_WS)
async def test_two_tiers_from_jwt_claims_have_their_own_limits(kind: str) -> None:
    guard = Guard(
        rules=[
            rules.JWTAuth(SECRET, algorithms=["HS256"], token=rules.from_query("token")),
            rules.MessageRate(plan_rate, key=rules.by_user),
        ]
    )
    with serve(WSGuardMiddleware(echo, guard=guard), kind) as server:
        url = server.url + "/ws?token="
        pro_token, free_token = mint("p", plan="pro"), mint("f", plan="free")
        async with connect(url + pro_token) as pro, connect(url + free_token) as free:
            for ws, n in ((pro, 6), (free, 4)):
                for i in range(n):
                    await ws.send(f"m{i}")
            (
                (pro_echoed, pro_code, pro_reason),
                (free_echoed, free_code, free_reason),
            ) = await asyncio.gather(read_until_closed(pro), read_until_closed(free))
        assert pro_echoed == ["m0", "m1", "m2", "m3"]
        assert free_echoed == ["m0", "m1"]
        assert (pro_code, free_code) == (1008, 1008)
        assert re.fullmatch(r"rate_limited; retry-after=(59|60)", pro_reason)
        assert re.fullmatch(r"rate_limited; retry-after=(59|60)", free_reason)
        snap = await until(server, guard, lambda s: s.active_connections == 0)
    assert snap.closes_by_rule == {"rate_limited": 2}


async def test_connect_rate_tiers_from_jwt_claims() -> None:
    guard = Guard(
        rules=[
            rules.ConnectRate(plan_connects, key=rules.by_user),
            rules.JWTAuth(SECRET, algorithms=["HS256"], token=rules.from_query("token")),
        ]
    )
    with serve(WSGuardMiddleware(echo, guard=guard)) as server:
        url = server.url + "/ws?token="
        # One user on two plans: each tier counts on its own.
        free, pro = url + mint("u", plan="free"), url + mint("u", plan="pro")
        async with connect(free) as ws:
            await ws.send("x")
            assert await asyncio.wait_for(ws.recv(), 5) == "x"
        assert await rejected(free) == (1008, "connect_rate_limited; retry-after=60")
        for _ in range(3):
            async with connect(pro) as ws:
                await ws.send("x")
                assert await asyncio.wait_for(ws.recv(), 5) == "x"
        assert await rejected(pro) == (1008, "connect_rate_limited; retry-after=60")
        # A token that fails auth is refused before this rule counts it.
        assert await rejected(url + "not-a-token") == (1008, "token_invalid")
        snap = await until(server, guard, lambda s: s.active_connections == 0)
    assert snap.closes_by_rule["connect_rate_limited"] == 2


async def test_a_failing_tier_callable_closes_the_handshake_1011() -> None:
    def broken(info: ConnectionInfo) -> str:
        return str((info.claims or {})["plan"])  # a token without "plan" raises KeyError

    guard = Guard(
        rules=[
            rules.JWTAuth(SECRET, algorithms=["HS256"], token=rules.from_query("token")),
            rules.MessageRate(broken, key=rules.by_user),
        ]
    )
    with serve(WSGuardMiddleware(echo, guard=guard)) as server:
        url = server.url + "/ws?token="
        assert await rejected(url + mint("u")) == (1011, "internal_error")
        async with connect(url + mint("u", plan="5/minute")) as ws:
            await ws.send("x")
            assert await asyncio.wait_for(ws.recv(), 5) == "x"
        snap = await until(server, guard, lambda s: s.active_connections == 0)
    assert snap.closes_by_rule["internal_error"] == 1
