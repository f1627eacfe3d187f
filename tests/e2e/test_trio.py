"""ws_guard on trio servers: ``hypercorn -k trio`` and Starlette's TestClient(backend="trio").

The hypercorn server is a real subprocess on a free port (tests/support/trio_app.py),
driven by the real ``websockets`` client; every close is asserted by code
and reason, and the server's own counters are read over HTTP.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import anyio.to_thread
import pytest
import websockets
from starlette.testclient import TestClient

from tests.support.hypercorn import closed_with, http, hypercorn_trio
from tests.support.jwt_keys import mint
from tests.support.starlette_apps import starlette_echo
from ws_guard import Guard, rules

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def trio_server() -> Iterator[str]:
    with hypercorn_trio("tests.support.trio_app:app") as (base, _):
        yield base


async def test_trio_rate_rule_closes_1008_rate_limited(trio_server: str) -> None:
    url = f"ws://{trio_server}/ws?token={mint('alice')}"
    async with websockets.connect(url) as ws:
        for i in range(4):
            await ws.send(f"m{i}")
        assert [await ws.recv() for _ in range(3)] == ["alice:m0", "alice:m1", "alice:m2"]
        assert await closed_with(ws) == (1008, "rate_limited; retry-after=1")


async def test_trio_expired_token_closes_1008_token_expired(trio_server: str) -> None:
    url = f"ws://{trio_server}/ws?token={mint('alice', exp_in=-60)}"
    async with websockets.connect(url) as ws:
        assert await closed_with(ws) == (1008, "token_expired")


async def test_trio_token_expiring_while_open_closes_1008(trio_server: str) -> None:
    # exp is whole seconds: 2 s from now expires 1 to 2 s after the handshake.
    url = f"ws://{trio_server}/ws?token={mint('bob', exp_in=2)}"
    async with websockets.connect(url) as ws:
        await ws.send("hi")
        assert await ws.recv() == "bob:hi"
        started = time.monotonic()
        assert await closed_with(ws) == (1008, "token_expired")
        assert time.monotonic() - started < 3.0  # by the deadline timer, not a later message


async def test_trio_connection_cap_closes_1013(trio_server: str) -> None:
    url = f"ws://{trio_server}/ws?token={mint('carol')}"
    async with websockets.connect(url) as one, websockets.connect(url) as two:
        for ws in (one, two):
            await ws.send("x")
            assert await ws.recv() == "carol:x"
        async with websockets.connect(url) as third:
            code, reason = await closed_with(third)
            assert code == 1013
            # Tenths of a second; the hint grows while an overload lasts.
            assert re.fullmatch(r"overloaded; retry-after=\d+(\.\d)?", reason), reason


async def test_trio_first_message_token(trio_server: str) -> None:
    async with websockets.connect(f"ws://{trio_server}/first") as ws:
        await ws.send(mint("dave"))
        await ws.send("hello")
        assert await ws.recv() == "dave:hello"
    async with websockets.connect(f"ws://{trio_server}/first") as ws:
        await ws.send("not-a-token")
        assert await closed_with(ws) == (1008, "token_invalid")


async def test_trio_drain_closes_1012_and_counts(trio_server: str) -> None:
    before = json.loads(http(trio_server, "/stats"))
    async with (
        websockets.connect(f"ws://{trio_server}/ws?token={mint('erin')}") as ws,
        websockets.connect(f"ws://{trio_server}/first") as first,
    ):
        await ws.send("a")
        assert await ws.recv() == "erin:a"
        await first.send(mint("erin"))
        await first.send("b")
        assert await first.recv() == "erin:b"
        assert await anyio.to_thread.run_sync(http, trio_server, "/drain", "POST") == b"drained"
        for conn in (ws, first):
            code, reason = await closed_with(conn)
            assert code == 1012
            assert re.fullmatch(r"restarting; retry-after=(1(\.[1-9])?|2)", reason), reason
    after = json.loads(http(trio_server, "/stats"))
    for name in ("ws", "first"):
        assert after[name].get("1012", 0) == before[name].get("1012", 0) + 1


async def test_trio_redis_storage_closes_1011_and_names_the_feature(tmp_path: Path) -> None:
    # hypercorn reports a failed lifespan startup as a warning and serves on
    # without lifespan; ws_guard then refuses each connection itself.
    log = tmp_path / "stderr.txt"
    with (
        log.open("w") as stderr,
        hypercorn_trio("tests.support.trio_app:redis_app", stderr=stderr) as (base, _),
    ):
        for _ in range(2):
            async with websockets.connect(f"ws://{base}/ws") as ws:
                assert await closed_with(ws) == (1011, "unsupported_backend")
    lines = [line for line in log.read_text().splitlines() if "needs asyncio" in line]
    assert len(lines) == 1, lines
    assert "ws_guard refuses WebSocket connections" in lines[0]
    assert "storage=SharedStorage('redis://127.0.0.1:1/0'" in lines[0]


def test_starlette_testclient_on_trio() -> None:
    guard = Guard(rules=[rules.MessageRate("2/second"), rules.MaxMessageSize(8)])

    app = starlette_echo(guard)
    with TestClient(app, backend="trio") as client:
        with client.websocket_connect("/ws") as ws:
            ws.send_text("a")
            assert ws.receive_text() == "echo:a"
            ws.send_text("too long a message")
            assert ws.receive() == {
                "type": "websocket.close",
                "code": 1009,
                "reason": "message_too_big",
            }
        with client.websocket_connect("/ws") as ws:
            for text in ("1", "2", "3"):
                ws.send_text(text)
            assert ws.receive_text() == "echo:1"
            assert ws.receive_text() == "echo:2"
            message = ws.receive()
            assert (message["code"], message["reason"]) == (1008, "rate_limited; retry-after=1")
    assert guard.metrics.snapshot().closes_by_code == {1009: 1, 1008: 1}
