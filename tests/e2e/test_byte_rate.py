"""``ByteRate`` and the ``rate.warning`` on real uvicorn with the real ``websockets`` client."""

from __future__ import annotations

import asyncio
import json
import re
import time

import pytest
from websockets.asyncio.client import connect

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

#: 4 + 3 + 2 + 1 = 10 bytes of UTF-8 in 4 characters: exactly the limit below.
AT_THE_LIMIT = ["😀", "€", "é", "a"]


async def settled(guard: Guard) -> None:
    """Poll until the server has counted the connection's end."""
    deadline = time.monotonic() + 5
    while guard.metrics.snapshot().active_connections:
        assert time.monotonic() < deadline, "the server never counted the close"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("kind", UVICORN_WS)
async def test_the_limit_passes_and_one_byte_more_closes(kind: str) -> None:
    guard = Guard(rules=[rules.ByteRate("10/minute")])
    with serve(WSGuardMiddleware(echo, guard=guard), kind) as server:
        async with connect(server.url + "/ws") as ws:
            for text in AT_THE_LIMIT:
                await ws.send(text)
                assert await asyncio.wait_for(ws.recv(), 5) == text
            await ws.send(b"!")  # one byte of binary past the limit
            received, code, reason = await read_until_closed(ws)
        assert received == []
        assert code == 1008
        assert re.fullmatch(r"rate_limited; retry-after=(59|60)", reason)
        await settled(guard)
    assert guard.metrics.snapshot().closes_by_rule == {"rate_limited": 1}


async def test_a_message_larger_than_the_limit_closes_1009() -> None:
    guard = Guard(rules=[rules.MaxMessageSize(10), rules.ByteRate("10/minute", name="uploads")])
    with serve(WSGuardMiddleware(echo, guard=guard)) as server:
        async with connect(server.url + "/ws") as ws:
            await ws.send(b"\x00" * 10)  # the size rule and the rate both admit it
            assert await asyncio.wait_for(ws.recv(), 5) == b"\x00" * 10
            await ws.send("x" * 11)  # the size rule answers first
            received, code, reason = await read_until_closed(ws)
        assert (received, code, reason) == ([], 1009, "message_too_big")


async def test_the_warning_comes_once_before_the_close() -> None:
    guard = Guard(rules=[rules.ByteRate("10/minute", warn_at=0.5, name="uploads")])
    notice = {"type": "rate.warning", "rule": "uploads", "retry_after": 60}
    with serve(WSGuardMiddleware(echo, guard=guard)) as server:
        async with connect(server.url + "/ws") as ws:
            await ws.send("abcd")  # 4 bytes: below the threshold of 5
            assert await asyncio.wait_for(ws.recv(), 5) == "abcd"
            await ws.send("e")  # 5: echoed, and the warning beside it, in either order
            got = [await asyncio.wait_for(ws.recv(), 5) for _ in range(2)]
            assert sorted(got, key=len) == ["e", json.dumps(notice)]
            assert json.loads(got[0] if got[0] != "e" else got[1]) == notice
            for text in ["fgh", "ij", "k"]:  # 8, 10, 11: no second warning, then the close
                await ws.send(text)
            received, code, reason = await read_until_closed(ws)
        assert received == ["fgh", "ij"]
        assert code == 1008
        assert re.fullmatch(r"rate_limited; retry-after=(59|60)", reason)


def plan_bytes(info: ConnectionInfo) -> str:
    return "20/minute" if (info.claims or {}).get("plan") == "pro" else "10/minute"


async def test_two_tiers_from_jwt_claims_have_their_own_byte_limits() -> None:
    guard = Guard(
        rules=[
            rules.JWTAuth(SECRET, algorithms=["HS256"], token=rules.from_query("token")),
            rules.ByteRate(plan_bytes, key=rules.by_user),
        ]
    )
    with serve(WSGuardMiddleware(echo, guard=guard)) as server:
        url = server.url + "/ws?token="
        async with (
            connect(url + mint("p", plan="pro")) as pro,
            connect(url + mint("f", plan="free")) as free,
        ):
            sent = [*AT_THE_LIMIT, *AT_THE_LIMIT, "!"]  # 10 + 10 + 1 bytes
            for text in sent:
                await pro.send(text)
                await free.send(text)
            (
                (pro_got, pro_code, pro_reason),
                (free_got, free_code, free_reason),
            ) = await asyncio.gather(read_until_closed(pro), read_until_closed(free))
        assert pro_got == sent[:8]  # pro: all 20 bytes, then one too many
        assert free_got == sent[:4]  # free: 10
        assert (pro_code, free_code) == (1008, 1008)
        assert re.fullmatch(r"rate_limited; retry-after=(59|60)", pro_reason)
        assert re.fullmatch(r"rate_limited; retry-after=(59|60)", free_reason)
        await settled(guard)
    assert guard.metrics.snapshot().closes_by_rule == {"rate_limited": 2}
