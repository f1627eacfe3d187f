"""Cross-site WebSocket hijacking end to end: cookie auth behind AllowedOrigins on real uvicorn."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.support.jwt_apps import whoami
from tests.support.jwt_keys import SECRET, mint
from tests.support.servers import UVICORN_WS, ServerThread, serve
from ws_guard import Guard, WSGuardMiddleware, rules

pytestmark = pytest.mark.e2e

ORIGINS = ["https://app.example.com", "https://*.example.org"]


def make_guard(*, allow_missing: bool) -> Guard:
    return Guard(
        rules=[
            rules.JWTAuth(SECRET, algorithms=["HS256"], token=rules.from_cookie("session")),
            rules.AllowedOrigins(ORIGINS, allow_missing=allow_missing),
        ],
        paths=["/ws"],
    )


@pytest.fixture(scope="module")
def strict() -> Iterator[tuple[ServerThread, Guard]]:
    guard = make_guard(allow_missing=False)
    with serve(WSGuardMiddleware(whoami, guard=guard)) as thread:
        yield thread, guard


@pytest.fixture(scope="module")
def lenient() -> Iterator[tuple[ServerThread, Guard]]:
    guard = make_guard(allow_missing=True)
    with serve(WSGuardMiddleware(whoami, guard=guard)) as thread:
        yield thread, guard


def headers(*origins: str, sub: str = "victim") -> list[tuple[str, str]]:
    """What a browser sends: the victim's cookie, and the page's Origin."""
    return [("Cookie", f"theme=dark; session={mint(sub)}"), *(("Origin", o) for o in origins)]


async def outcome(thread: ServerThread, *origins: str) -> tuple[int, str] | str:
    """``(code, reason)`` of the server's close, or the subject the app saw when admitted."""
    async with connect(f"{thread.url}/ws", proxy=None, additional_headers=headers(*origins)) as ws:
        try:
            await ws.send("hi")
            who = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert await asyncio.wait_for(ws.recv(), 5) == "hi"
            return str(who["sub"])
        except ConnectionClosed as exc:
            received = exc.rcvd
    assert received is not None, "the server dropped TCP without a close frame"
    return received.code, received.reason


REFUSED = (1008, "origin_not_allowed")


@pytest.mark.parametrize("ws_impl", UVICORN_WS)
async def test_a_foreign_page_with_the_victims_cookie_is_refused(ws_impl: str) -> None:
    guard = make_guard(allow_missing=False)
    with serve(WSGuardMiddleware(whoami, guard=guard), ws_impl) as thread:
        assert await outcome(thread, "https://evil.example") == REFUSED
        assert await outcome(thread, "https://app.example.com") == "victim"
    snap = guard.metrics.snapshot()
    assert snap.closes_by_rule == {"origin_not_allowed": 1}
    assert snap.handshakes_rejected == 1


@pytest.mark.parametrize(
    ("origin", "expected"),
    [
        ("https://app.example.com", "victim"),
        ("https://APP.Example.com:443", "victim"),  # RFC 6454: case and default port
        ("https://a.example.org", "victim"),
        ("https://a.b.example.org", "victim"),
        ("https://example.org", REFUSED),  # the wildcard covers subdomains only
        ("https://evilexample.org", REFUSED),
        ("https://example.org.evil.net", REFUSED),
        ("https://a.example.org:8443", REFUSED),
        ("http://app.example.com", REFUSED),
        ("https://app.example.com/", REFUSED),
        ("null", REFUSED),  # a sandboxed iframe or a file:// page
    ],
)
async def test_origin_variants(
    strict: tuple[ServerThread, Guard], origin: str, expected: tuple[int, str] | str
) -> None:
    thread, guard = strict
    before = guard.metrics.snapshot().closes_by_rule.get("origin_not_allowed", 0)
    assert await outcome(thread, origin) == expected
    after = guard.metrics.snapshot().closes_by_rule.get("origin_not_allowed", 0)
    assert after - before == (1 if expected == REFUSED else 0)


@pytest.mark.parametrize("ws_impl", ["wsproto", "websockets-sansio"])
async def test_several_origin_lines_are_refused(ws_impl: str) -> None:
    """wsproto hands both lines to the app, and ws_guard refuses them; uvicorn's
    websockets implementations answer HTTP 400 themselves, before any app runs."""
    guard = make_guard(allow_missing=False)
    with serve(WSGuardMiddleware(whoami, guard=guard), ws_impl) as thread:
        for second in ("https://evil.example", "https://app.example.com"):
            if ws_impl == "wsproto":
                assert await outcome(thread, "https://app.example.com", second) == REFUSED
            else:
                with pytest.raises(InvalidStatus) as info:
                    await outcome(thread, "https://app.example.com", second)
                assert info.value.response.status_code == 400
    counted = 2 if ws_impl == "wsproto" else 0
    assert guard.metrics.snapshot().closes_by_rule == (
        {"origin_not_allowed": counted} if counted else {}
    )


async def test_a_missing_origin_is_refused_by_default(strict: tuple[ServerThread, Guard]) -> None:
    thread, _ = strict
    assert await outcome(thread) == REFUSED


async def test_a_missing_origin_is_admitted_with_allow_missing(
    lenient: tuple[ServerThread, Guard],
) -> None:
    thread, guard = lenient
    assert await outcome(thread) == "victim"
    assert await outcome(thread, "https://evil.example") == REFUSED  # a browser still is checked
    assert guard.metrics.snapshot().closes_by_rule == {"origin_not_allowed": 1}
