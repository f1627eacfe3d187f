"""JWT auth end to end: real uvicorn on 127.0.0.1, the real ``websockets`` client."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.support.jwt_apps import whoami
from tests.support.jwt_keys import SECRET, mint
from tests.support.servers import UVICORN_WS, ServerThread, serve
from ws_guard import Guard, WSGuardMiddleware, rules

pytestmark = pytest.mark.e2e


def make_guard() -> Guard:
    rule = rules.JWTAuth(
        SECRET,
        algorithms=["HS256"],
        token=[
            rules.from_query("token"),
            rules.from_header(),
            rules.from_cookie("session"),
            rules.from_subprotocol("access_token"),
            rules.from_first_message(timeout=1.0),
        ],
        expiring_notice=1.0,
    )
    # Cookie auth needs an origin check; the websockets client sends no Origin.
    origins = rules.AllowedOrigins(["https://app.example"], allow_missing=True)
    return Guard(rules=[origins, rule], paths=["/ws"])


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[ServerThread, Guard]]:
    guard = make_guard()
    with serve(WSGuardMiddleware(whoami, guard=guard)) as thread:
        yield thread, guard


async def closed_with(ws: object, timeout: float = 5.0) -> tuple[int | None, str | None, float]:
    """Wait for the server's close; its code, reason and wall-clock arrival time."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), timeout)  # type: ignore[attr-defined]
    except ConnectionClosed as exc:
        at = time.time()
        received = exc.rcvd
    assert received is not None, "the server dropped TCP without a close frame"
    return received.code, received.reason, at


async def report(ws: object) -> dict:
    await ws.send("hi")  # type: ignore[attr-defined]
    who: dict = json.loads(await ws.recv())  # type: ignore[attr-defined]
    assert await ws.recv() == "hi"  # type: ignore[attr-defined]
    return who


@pytest.mark.parametrize("source", ["query", "header", "cookie", "subprotocol"])
async def test_each_handshake_source(server: tuple[ServerThread, Guard], source: str) -> None:
    thread, _ = server
    token = mint(source)
    url, options = f"{thread.url}/ws", {}
    if source == "query":
        url += f"?token={token}"
    elif source == "header":
        options["additional_headers"] = {"Authorization": f"Bearer {token}"}
    elif source == "cookie":
        options["additional_headers"] = {"Cookie": f"theme=dark; session={token}"}
    else:
        options["subprotocols"] = ["access_token", token]
    async with connect(url, proxy=None, **options) as ws:  # type: ignore[arg-type]
        who = await report(ws)
        assert who["sub"] == source
        if source == "subprotocol":
            assert ws.subprotocol == "access_token"
            assert who["subprotocols"] == ["access_token"]


async def test_first_message_source(server: tuple[ServerThread, Guard]) -> None:
    thread, _ = server
    async with connect(f"{thread.url}/ws", proxy=None) as ws:
        await ws.send(json.dumps({"type": "auth", "token": mint("fm")}))
        assert (await report(ws))["sub"] == "fm"


async def test_first_message_timeout(server: tuple[ServerThread, Guard]) -> None:
    thread, _ = server
    async with connect(f"{thread.url}/ws", proxy=None) as ws:
        started = time.time()
        code, reason, at = await closed_with(ws)
    assert (code, reason) == (1008, "token_missing")
    assert 0.9 <= at - started <= 1.5


@pytest.mark.parametrize(
    ("header", "first_message", "reason"),
    [
        ("Bearer junk", None, "token_invalid"),
        (f"Bearer {mint(exp_in=-1)}", None, "token_expired"),
        ("Basic dXNlcjpwdw==", "not a token, not JSON", "token_invalid"),
        ("Basic dXNlcjpwdw==", '{"type": "auth"}', "token_missing"),
    ],
)
async def test_rejections_reach_the_client_as_close_codes(
    server: tuple[ServerThread, Guard], header: str, first_message: str | None, reason: str
) -> None:
    thread, _ = server
    async with connect(
        f"{thread.url}/ws", proxy=None, additional_headers={"Authorization": header}
    ) as ws:
        if first_message is not None:  # no handshake token: the first message must carry it
            await ws.send(first_message)
        code, close_reason, _ = await closed_with(ws)
    assert (code, close_reason) == (1008, reason)


async def test_rejected_subprotocol_client_reads_the_code(
    server: tuple[ServerThread, Guard],
) -> None:
    thread, _ = server
    async with connect(
        f"{thread.url}/ws", proxy=None, subprotocols=["access_token", mint(exp_in=-1)]
    ) as ws:
        assert ws.subprotocol == "access_token"
        code, reason, _ = await closed_with(ws)
    assert (code, reason) == (1008, "token_expired")


async def test_live_expiry_closes_an_idle_socket_on_time(
    server: tuple[ServerThread, Guard],
) -> None:
    thread, guard = server
    token = mint("idle", exp_in=2)  # int exp: expires 1-2 s from now
    exp = json.loads(__import__("base64").urlsafe_b64decode(token.split(".")[1] + "==").decode())[
        "exp"
    ]
    async with connect(
        f"{thread.url}/ws", proxy=None, additional_headers={"Authorization": f"Bearer {token}"}
    ) as ws:
        await report(ws)
        notice = json.loads(await asyncio.wait_for(ws.recv(), 3))  # expiring_notice=1.0
        notice_at = time.time()
        assert notice == {"type": "auth.expiring", "in": 1}
        assert abs(notice_at - (exp - 1.0)) < 0.1
        code, reason, at = await closed_with(ws)  # the client sends nothing
    assert (code, reason) == (1008, "token_expired")
    lateness = at - exp
    assert -0.02 <= lateness <= 0.1, f"closed {lateness * 1000:.0f} ms after exp"
    snap = guard.metrics.snapshot()
    assert snap.closes_by_rule.get("token_expired", 0) >= 1


async def test_refresh_keeps_the_socket_open_past_the_first_exp(
    server: tuple[ServerThread, Guard],
) -> None:
    thread, _ = server
    # exp is whole seconds; 2-3 s ahead, so the expiring notice (1 s before exp)
    # cannot come before the refresh is read.
    exp = int(time.time()) + 3
    token = mint("alice", exp_in=None, exp=exp)
    control = mint("bob", exp_in=None, exp=exp + 1)  # expires one second later
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        connect(f"{thread.url}/ws", proxy=None, additional_headers=headers) as ws,
        connect(
            f"{thread.url}/ws",
            proxy=None,
            additional_headers={"Authorization": f"Bearer {control}"},
        ) as unrefreshed,
    ):
        await report(ws)
        await report(unrefreshed)
        await ws.send(json.dumps({"type": "auth.refresh", "token": mint("alice", exp_in=60)}))
        # The control's expiry closing it says the server's clock passed the
        # first token's exp, a second earlier.
        code, reason, _ = await closed_with(unrefreshed, timeout=10)
        assert (code, reason) == (1008, "token_expired")
        await ws.send("still open")
        assert await ws.recv() == "still open"  # the refresh itself never echoed


@pytest.mark.parametrize("refresh_sub", ["mallory", None])
async def test_bad_refresh_closes(
    server: tuple[ServerThread, Guard], refresh_sub: str | None
) -> None:
    thread, _ = server
    token = mint("alice", exp_in=30)
    new = mint("mallory", exp_in=60) if refresh_sub else "junk"
    async with connect(
        f"{thread.url}/ws", proxy=None, additional_headers={"Authorization": f"Bearer {token}"}
    ) as ws:
        await report(ws)
        await ws.send(json.dumps({"type": "auth.refresh", "token": new}))
        code, reason, _ = await closed_with(ws)
    assert (code, reason) == (1008, "token_invalid")


@pytest.mark.parametrize("ws_impl", UVICORN_WS)
async def test_query_token_never_reaches_uvicorns_access_log(ws_impl: str) -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    guard = make_guard()
    with serve(WSGuardMiddleware(whoami, guard=guard), ws_impl, log_level="info") as thread:
        for name in ("uvicorn.error", "uvicorn.access", "ws_guard"):
            logging.getLogger(name).addHandler(handler)
        try:
            good, bad = mint("q"), mint("q", exp_in=-1)
            async with connect(
                f"{thread.url}/ws?room=1&token={good}",
                proxy=None,
                subprotocols=["access_token", mint("s")],  # and the subprotocol source
            ) as ws:
                assert ws.subprotocol == "access_token"
                assert (await report(ws))["sub"] == "q"  # the query is the first source
            async with connect(f"{thread.url}/ws?token={bad}", proxy=None) as ws:
                await closed_with(ws)
        finally:
            for name in ("uvicorn.error", "uvicorn.access", "ws_guard"):
                logging.getLogger(name).removeHandler(handler)
    lines = [r.getMessage() for r in records]
    assert any("/ws?room=1&token=redacted" in line and "[accepted]" in line for line in lines)
    assert any("rule=token_expired" in line and line.endswith("path=/ws") for line in lines)
    for line in lines:
        assert good not in line
        assert bad not in line
