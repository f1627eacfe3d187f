"""Client text in ws_guard's log lines, on real servers.

ASGI servers percent-decode the request path into ``scope["path"]``, so a
client that asks for ``/ws/%0A...`` puts a real line break in it. ws_guard
logs the path of every connection it closes: written as it came, the path
forged whole log records ("ws_guard closed connection ... client=10.9.9.9"),
and a 4,000-character path made a 4,000-character record on every refusal.
uvicorn's own access line logs the raw (still encoded) path.
"""

from __future__ import annotations

import asyncio
import re
import time

import pytest
from websockets.asyncio.client import connect

from tests.support.apps import echo
from tests.support.jwt_keys import SECRET
from tests.support.rate_helpers import Clock, read_until_closed
from tests.support.servers import UVICORN_WS, serve
from ws_guard import Guard, WSGuardMiddleware, rules
from ws_guard._core.request import MAX_LOGGED_PATH, loggable_path
from ws_guard.types import Receive, Scope, Send

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.filterwarnings("ignore:The `websockets` implementation is deprecated"),
    pytest.mark.filterwarnings("ignore:websockets.legacy is deprecated"),
    pytest.mark.filterwarnings("ignore:remove second argument of ws_handler"),
]

FORGED = "ws_guard%20closed%20connection%20code=1000%20rule=None%20client=10.9.9.9%20path=/x"
#: Line breaks as the client percent-encodes them: LF, CR LF, NEL, LINE SEPARATOR
#: (Python's str.splitlines and many log viewers break on the last two too).
BREAKS = ["%0A", "%0D%0A", "%C2%85", "%E2%80%A8"]


def app() -> WSGuardMiddleware:
    """Every WebSocket path guarded; no token is ever sent, so every handshake is refused."""
    guard = Guard(
        rules=[rules.JWTAuth(SECRET, algorithms=["HS256"], token=rules.from_query("token"))]
    )
    return WSGuardMiddleware(echo, guard=guard)


def close_records(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "ws_guard" and r.getMessage().startswith("ws_guard closed connection")
    ]


@pytest.mark.parametrize("server", [*UVICORN_WS, "hypercorn"])
async def test_a_path_with_line_breaks_forges_no_log_record(
    server: str, caplog: pytest.LogCaptureFixture
) -> None:
    with serve(app(), server) as srv:
        for brk in BREAKS:
            async with connect(f"{srv.url}/ws/{brk}{FORGED}") as ws:
                assert (await read_until_closed(ws))[1:] == (1008, "token_missing")
    records = close_records(caplog)
    assert len(records) == len(BREAKS)
    for brk, message in zip(BREAKS, records, strict=True):
        assert message.splitlines() == [message]  # one line, whatever the viewer splits on
        assert message == (
            "ws_guard closed connection code=1008 rule=token_missing client=127.0.0.1 "
            f"path=/ws/{brk}{FORGED}"
        )


@pytest.mark.parametrize("server", [*UVICORN_WS, "hypercorn"])
async def test_a_long_path_makes_a_short_log_record(
    server: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = "/ws/" + "a" * 4000
    with serve(app(), server) as srv:
        async with connect(srv.url + path) as ws:
            assert (await read_until_closed(ws))[1:] == (1008, "token_missing")
    (message,) = close_records(caplog)
    logged = re.fullmatch(r".* path=(\S+) \(4004 characters\)", message)
    assert logged is not None, message
    assert logged[1] == path[:MAX_LOGGED_PATH] + "..."


@pytest.mark.parametrize(
    ("path", "logged"),
    [
        ("/ws", "/ws"),
        ("/ws/caf\u00e9 room", "/ws/caf%C3%A9%20room"),
        ("/ws/\x00\x1b[31m\x7f", "/ws/%00%1B%5B31m%7F"),
        ("/ws/100%", "/ws/100%25"),  # a decoded "%" stays distinguishable from an escape
        ("/ws/\ud800", "/ws/%ED%A0%80"),  # a lone surrogate (a hand-built scope) never raises
        ("/ws/" + "a" * (MAX_LOGGED_PATH - 4), "/ws/" + "a" * (MAX_LOGGED_PATH - 4)),
    ],
)
def test_loggable_path(path: str, logged: str) -> None:
    assert loggable_path(path) == logged


def test_a_long_path_is_cut_on_a_character_before_escaping() -> None:
    path = "/ws/" + "\u00e9" * MAX_LOGGED_PATH
    cut = "/ws/" + "%C3%A9" * (MAX_LOGGED_PATH - 4)
    assert loggable_path(path) == f"{cut}... ({len(path)} characters)"


async def push_only(scope: Scope, receive: Receive, send: Send) -> None:
    """Accept, then only ever send: never sees ws_guard's close, so ws_guard cancels it."""
    if scope["type"] != "websocket":
        await echo(scope, receive, send)
        return
    await receive()
    await send({"type": "websocket.accept"})
    while True:
        await send({"type": "websocket.send", "text": "tick"})
        await asyncio.sleep(0.02)


async def test_the_app_exit_record_forges_no_log_record(caplog: pytest.LogCaptureFixture) -> None:
    guard = Guard(app_exit_timeout=0.05)
    with serve(WSGuardMiddleware(push_only, guard=guard)) as srv:
        async with connect(f"{srv.url}/ws/%0A{FORGED}") as ws:
            assert await ws.recv() == "tick"
            drained = asyncio.create_task(asyncio.to_thread(srv.call, guard.drain(0.0)))
            received, code, _ = await read_until_closed(ws)
            assert set(received) <= {"tick"}
            assert code == 1012
            await drained
        deadline = time.monotonic() + 5
        while not [r for r in caplog.records if "cancelled an app handler" in r.getMessage()]:
            assert time.monotonic() < deadline, "the app handler was never cancelled"
            await asyncio.sleep(0.02)
    (message,) = [r.getMessage() for r in caplog.records if "cancelled an app" in r.getMessage()]
    assert message.splitlines() == [message]
    assert message.endswith(f"path=/ws/%0A{FORGED}")


async def test_a_flood_of_shadow_breaches_makes_one_record_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each shadow breach is counted; the WARNING is written once per rule per interval.

    One WARNING per breaching message let a client turn 2,000 one-byte
    binary frames (7 bytes on the wire) into 2,000 log records of ~90 bytes
    each. The guard's clock stands still until the test moves it.
    """
    clock = Clock()
    guard = Guard(rules=[rules.MessageTypes(text=True, binary=False, enforce=False)], clock=clock)
    sent = 2000
    with serve(WSGuardMiddleware(echo, guard=guard)) as srv:
        async with connect(srv.url + "/ws") as ws:
            for _ in range(sent):
                await ws.send(b"x")
            for _ in range(sent):  # shadow mode: every message still arrives
                assert await asyncio.wait_for(ws.recv(), 5) == b"x"
            clock.now += guard.shadow_log_interval
            await ws.send(b"x")
            assert await asyncio.wait_for(ws.recv(), 5) == b"x"
    assert guard.metrics.snapshot().shadow_breaches_by_rule == {"unsupported_data": sent + 1}
    records = [r.getMessage() for r in caplog.records if "shadow breach" in r.getMessage()]
    prefix = "ws_guard shadow breach code=1003 rule=unsupported_data client=127.0.0.1 path=/ws"
    assert records == [prefix, f"{prefix} ({sent - 1} more not logged)"]
