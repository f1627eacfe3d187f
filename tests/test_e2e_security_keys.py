"""Network identity on real uvicorn: repeated header lines and IPv6 prefixes.

A proxy that appends its own ``X-Forwarded-For`` line (HAProxy ``option
forwardfor``) after a line the client wrote must not let the client choose
its key; credentials sent twice must not let the client choose which one
counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence

import pytest
from websockets.asyncio.client import ClientConnection, connect

from apps import echo
from jwt_apps import whoami
from jwt_keys import SECRET, mint
from rate_helpers import Clock, read_until_closed
from servers import serve
from ws_guard import Guard, WSGuardMiddleware, rules

pytestmark = [pytest.mark.e2e]

Headers = Sequence[tuple[str, str]]
#: The address the proxy saw and appended; every forged line comes before it.
REAL = "203.0.113.7"
VICTIM = "203.0.113.9"
FORGED = [VICTIM] + [f"198.51.100.{i}" for i in range(1, 8)]


def lines(*values: str) -> list[tuple[str, str]]:
    """One ``X-Forwarded-For`` field line per value, in order."""
    return [("X-Forwarded-For", value) for value in values]


async def admitted(url: str, headers: Headers = ()) -> None:
    async with connect(url, additional_headers=headers) as ws:
        await ws.send("ping")
        assert await asyncio.wait_for(ws.recv(), 5) == "ping"


async def rejected(url: str, headers: Headers = ()) -> tuple[int, str]:
    """Connect, expect the accept-then-close of a refused handshake; its code and reason."""
    async with connect(url, additional_headers=headers) as ws:
        received, code, reason = await read_until_closed(ws)
    assert received == []
    return code, reason


@contextlib.asynccontextmanager
async def held(url: str, headers: Headers) -> AsyncIterator[ClientConnection]:
    """An admitted connection kept open until the block ends."""
    async with connect(url, additional_headers=headers) as ws:
        await ws.send("ping")
        assert await asyncio.wait_for(ws.recv(), 5) == "ping"
        yield ws


def proxied(rule: rules.Rule) -> Guard:
    return Guard(rules=[rule], trusted_proxies=["127.0.0.1"], clock=Clock())


# -- X-Forwarded-For over several field lines ----------------------------------
@pytest.mark.parametrize(
    "shape",
    [
        pytest.param(lambda forged: lines(forged, REAL), id="two-lines"),
        pytest.param(lambda forged: lines(forged, "192.0.2.1", REAL), id="three-lines"),
        pytest.param(lambda forged: lines(f"192.0.2.1, {forged}", REAL), id="comma-list-line"),
        # a second, trusted proxy appended a line after the first proxy's
        pytest.param(lambda forged: lines(forged, REAL, "127.0.0.1"), id="trusted-hop-line"),
    ],
)
async def test_forged_lines_before_the_proxy_line_are_one_key_for_connect_rate(
    shape: object,
) -> None:
    guard = proxied(rules.ConnectRate("3/minute"))
    with serve(WSGuardMiddleware(echo, guard=guard), proxy_headers=False) as server:
        url = server.url + "/ws"
        outcomes = []
        for forged in FORGED:
            headers = shape(forged)  # type: ignore[operator]
            if len(outcomes) < 3:
                await admitted(url, headers)
                outcomes.append(None)
            else:
                outcomes.append(await rejected(url, headers))
        # The victim whose address was forged is not locked out.
        await admitted(url, lines(VICTIM))
    assert outcomes == [None] * 3 + [(1008, "connect_rate_limited; retry-after=60")] * 5
    assert guard.metrics.snapshot().closes_by_rule == {"connect_rate_limited": 5}


@pytest.mark.parametrize(
    "shape",
    [
        pytest.param(lambda forged: lines(forged, REAL), id="two-lines"),
        pytest.param(lambda forged: lines(forged, forged, REAL), id="three-lines"),
    ],
)
async def test_forged_lines_before_the_proxy_line_are_one_key_for_connection_caps(
    shape: object,
) -> None:
    cap = rules.MaxConnectionsPerKey(2)
    guard = proxied(cap)
    with serve(WSGuardMiddleware(echo, guard=guard), proxy_headers=False) as server:
        url = server.url + "/ws"
        async with held(url, shape(FORGED[0])), held(url, shape(FORGED[1])):  # type: ignore[operator]
            assert cap.count(REAL) == 2
            refusals = [await rejected(url, shape(forged)) for forged in FORGED[2:]]  # type: ignore[operator]
            await admitted(url, lines(VICTIM))
    assert refusals == [(1008, "too_many_connections")] * 6


# -- credentials sent twice ------------------------------------------------------
def auth_guard() -> Guard:
    rule = rules.JWTAuth(
        SECRET,
        algorithms=["HS256"],
        token=[rules.from_query("token"), rules.from_header(), rules.from_cookie("session")],
    )
    return Guard(rules=[rule])


async def subject(url: str, headers: Headers = ()) -> str:
    async with connect(url, additional_headers=headers) as ws:
        await ws.send("hi")
        who = json.loads(await asyncio.wait_for(ws.recv(), 5))
    sub: str = who["sub"]
    return sub


ALICE = mint("alice")
MALLORY = mint("mallory")


@pytest.mark.parametrize(
    ("url_tail", "headers"),
    [
        # Authorization is a singleton field: two lines are an invalid request
        ("", [("Authorization", f"Bearer {ALICE}"), ("Authorization", f"Bearer {MALLORY}")]),
        ("", [("Authorization", f"Bearer {ALICE}"), ("Authorization", f"Bearer {ALICE}")]),
        ("", [("Authorization", "Bearer forged"), ("Authorization", f"Bearer {ALICE}")]),
        # one cookie name with two different values, on one line or two
        ("", [("Cookie", f"session={MALLORY}"), ("Cookie", f"session={ALICE}")]),
        ("", [("Cookie", f"session={MALLORY}; session={ALICE}")]),
        # one query parameter with two different values
        (f"?token={ALICE}&token={MALLORY}", []),
    ],
    ids=[
        "auth-two",
        "auth-same-twice",
        "auth-forged-first",
        "cookie-lines",
        "cookie-pairs",
        "query",
    ],
)
async def test_a_credential_given_twice_is_invalid(url_tail: str, headers: Headers) -> None:
    guard = auth_guard()
    with serve(WSGuardMiddleware(whoami, guard=guard)) as server:
        assert await rejected(server.url + "/ws" + url_tail, headers) == (1008, "token_invalid")


async def test_cookie_lines_are_joined() -> None:
    guard = auth_guard()
    with serve(WSGuardMiddleware(whoami, guard=guard)) as server:
        url = server.url + "/ws"
        # HTTP/2 proxies may split Cookie into lines (RFC 9113 section 8.2.3)
        assert await subject(url, [("Cookie", "theme=dark"), ("Cookie", f"session={ALICE}")]) == (
            "alice"
        )
        assert await subject(url + f"?token={ALICE}&token={ALICE}") == "alice"
