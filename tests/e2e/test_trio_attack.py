"""Hostile clients against a real ``hypercorn -k trio`` (tests/support/trio_app.py).

Clients that vanish at every stage (mid-handshake, right after the upgrade,
with a first-message token pending, with an open guarded connection) must
leave nothing held: the connection gauge on ``/ws`` (limit 2) admits two
new clients afterwards, and the server's own close counters say what
happened.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest
import websockets

from tests.support.children import signal_group
from tests.support.hypercorn import closed_with, http, hypercorn_trio
from tests.support.jwt_keys import mint

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def trio_server() -> Iterator[str]:
    with hypercorn_trio("tests.support.trio_app:app") as (base, _):
        yield base


async def two_admitted(base: str, subject: str, within: float = 5.0) -> None:
    """Two clients at once are both served on /ws (ConnectionCount limit 2).

    Polls on the real condition: the server learns of a dropped TCP
    connection only when its read fails.
    """
    url = f"ws://{base}/ws?token={mint(subject)}"
    deadline = time.monotonic() + within
    while True:
        async with websockets.connect(url) as one, websockets.connect(url) as two:
            try:
                for ws in (one, two):
                    await ws.send("x")
                    assert await ws.recv() == f"{subject}:x"
                return
            except websockets.ConnectionClosed as exc:
                if time.monotonic() > deadline:
                    raise AssertionError(f"slots still held after {within} s: {exc!r}") from exc
        await asyncio.sleep(0.05)  # a short bounded pause between polls


async def test_dropped_tcp_connections_free_their_slots(trio_server: str) -> None:
    url = f"ws://{trio_server}/ws?token={mint('mallory')}"
    for _ in range(3):
        clients = [await websockets.connect(url) for _ in range(2)]
        for ws in clients:
            await ws.send("hi")
            assert await ws.recv() == "mallory:hi"
        for ws in clients:
            ws.transport.abort()  # no close frame, no FIN handshake: a vanished client
    await two_admitted(trio_server, "alice")


async def test_clients_leaving_mid_handshake_and_mid_hold(trio_server: str) -> None:
    before = json.loads(http(trio_server, "/stats"))["first"]
    host, port = trio_server.split(":")
    for _ in range(5):
        # Half an upgrade request, then gone.
        with socket.create_connection((host, int(port)), timeout=2) as sock:
            sock.sendall(b"GET /first HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
    held = [await websockets.connect(f"ws://{trio_server}/first") for _ in range(5)]
    for ws in held:
        ws.transport.abort()  # the first-message token never comes
    async with websockets.connect(f"ws://{trio_server}/first") as ws:
        await ws.send(mint("dave"))
        await ws.send("hello")
        assert await ws.recv() == "dave:hello"
    async with websockets.connect(f"ws://{trio_server}/first") as ws:
        await ws.send("not-a-token")
        assert await closed_with(ws) == (1008, "token_invalid")
    deadline = time.monotonic() + 5.0
    while True:
        after = json.loads(http(trio_server, "/stats"))["first"]
        # Each client is counted once, as the client's close, never as a guard
        # close: the five vanished ones and dave's clean close (hypercorn 0.18
        # reports 1006 for a client's 1000 too, with or without ws_guard).
        dropped = after.get("1006", 0) - before.get("1006", 0)
        if dropped >= 6 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)  # bounded poll on the server counters
    assert after.get("1008", 0) - before.get("1008", 0) == 1
    assert after.get("1011", 0) == before.get("1011", 0)
    assert dropped == 6, after
    await two_admitted(trio_server, "erin")


async def test_sigterm_with_connections_open_drains_and_exits_cleanly() -> None:
    """SIGTERM to the server's process group (as a container runtime sends it)
    while connections are open: a served one, one whose first-message token
    is pending, and a handler that never returns after its client left. Both
    open clients get 1012 from drain_signals, hypercorn exits 0, and its
    stderr has no traceback, no TrioInternalError, nothing left pending."""
    with hypercorn_trio("tests.support.trio_attack_app:app", stderr=subprocess.PIPE) as (
        base,
        process,
    ):
        served = await websockets.connect(f"ws://{base}/ws")
        await served.send(mint("al"))
        await served.send("x")
        assert await served.recv() == "al:x"
        pending = await websockets.connect(f"ws://{base}/ws")  # never sends its token
        stuck = await websockets.connect(f"ws://{base}/stuck")
        await stuck.send(mint("st"))
        await stuck.send("y")
        assert await stuck.recv() == "st:y"
        await stuck.close()
        signal_group(process, signal.SIGTERM)
        for ws in (served, pending):
            code, reason = await asyncio.wait_for(closed_with(ws), 10)
            assert code == 1012
            assert re.fullmatch(r"restarting; retry-after=(1(\.[1-9])?|2)", reason), reason
        assert await asyncio.to_thread(process.wait, 20) == 0
        assert process.stderr is not None
        stderr = process.stderr.read().decode()
    for bad in ("Traceback", "TrioInternalError", "never awaited", "was destroyed", "ERROR"):
        assert bad not in stderr, stderr
