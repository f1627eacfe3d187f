"""Load shedding and drain end to end: real uvicorn, the real ``websockets`` client."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.support.apps import echo
from tests.support.children import running
from tests.support.helpers import eventually
from tests.support.paths import SERVER_PATH, TESTS
from tests.support.servers import UVICORN_WS, free_port, serve
from ws_guard import Guard, WSGuardMiddleware, load
from ws_guard.types import Receive, Scope, Send

pytestmark = pytest.mark.e2e

OVERLOADED = re.compile(r"overloaded; retry-after=\d+(?:\.\d)?")
RESTARTING = re.compile(r"restarting; retry-after=\d+(?:\.\d)?")


async def blocking_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Echo, plus ``GET /block?s=0.5`` that blocks the event loop (a CPU-bound handler)."""
    if scope["type"] == "http" and scope["path"] == "/block":
        time.sleep(float(scope["query_string"].decode().partition("=")[2] or 0.5))
    await echo(scope, receive, send)


async def closed_by_server(ws: ClientConnection, timeout: float = 5.0) -> tuple[int, str]:
    """Wait for the server's close frame; its code and reason."""
    with pytest.raises(ConnectionClosed) as caught:
        await asyncio.wait_for(ws.recv(), timeout)
    assert caught.value.rcvd is not None, "no close frame (1006)"
    return caught.value.rcvd.code, caught.value.rcvd.reason


async def echoes(ws: ClientConnection) -> bool:
    await ws.send("ping")
    return await asyncio.wait_for(ws.recv(), 5) == "ping"


async def admitted_or_1013(url: str) -> bool:
    """One handshake: True when it echoes, False when shed with 1013."""
    async with connect(url) as ws:
        try:
            return await echoes(ws)
        except ConnectionClosed as closed:
            code = closed.rcvd.code if closed.rcvd is not None else None
    if code != 1013:
        raise AssertionError(f"expected an echo or 1013, got close code {code}")
    return False


async def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


# -- shedding at admission ---------------------------------------------------------------
@pytest.mark.parametrize("ws_impl", UVICORN_WS)
async def test_third_client_is_told_1013_after_accept_and_a_freed_slot_admits(
    ws_impl: str,
) -> None:
    guard = Guard(load=[load.ConnectionCount(limit=2)])
    with serve(WSGuardMiddleware(echo, guard=guard), ws_impl) as server:
        url = server.url + "/ws"
        async with connect(url) as first, connect(url) as second:
            assert await echoes(first)
            assert await echoes(second)
            async with connect(url) as third:  # the handshake succeeds: not an HTTP 403
                code, reason = await closed_by_server(third)
            assert code == 1013
            assert OVERLOADED.fullmatch(reason), reason
            await first.close()
            await wait_until(lambda: guard.metrics.active_connections == 1)
            async with connect(url) as fourth:
                assert await echoes(fourth)
                assert await echoes(second)
    snap = guard.metrics.snapshot()
    assert snap.gauges[0].sheds == 1
    assert snap.closes_by_code[1013] == 1
    assert snap.handshakes_admitted == 3


async def test_http_mode_refuses_with_503_and_retry_after() -> None:
    guard = Guard(load=[load.ConnectionCount(limit=1)], reject="http")
    with serve(WSGuardMiddleware(echo, guard=guard)) as server:
        async with connect(server.url + "/ws") as first:
            with pytest.raises(InvalidStatus) as caught:
                async with connect(server.url + "/ws"):
                    pass
            response = caught.value.response
            assert response.status_code == 503
            assert response.headers["Retry-After"] in ("1", "2")
            assert await echoes(first)


async def test_a_blocked_loop_sheds_the_next_handshake_until_the_hold_passes() -> None:
    lag = load.EventLoopLag(limit=0.2, hold=0.5, window=0.2)
    guard = Guard(load=[lag])
    with serve(WSGuardMiddleware(blocking_app, guard=guard)) as server:
        url = server.url + "/ws"
        async with connect(url) as ws:
            assert await echoes(ws)
        httpx.get(server.http_url + "/block?s=0.5", timeout=10)  # the loop stalls 0.5 s
        unblocked = time.monotonic()
        async with connect(url) as ws:
            code, reason = await closed_by_server(ws)
        assert code == 1013
        assert OVERLOADED.fullmatch(reason), reason
        # Clear needs the stall out of the window (0.2 s) and then the hold
        # (0.5 s): no admission before ~0.7 s, and one soon after.
        admitted_after = None
        while time.monotonic() - unblocked < 5.0:
            if await admitted_or_1013(url):
                admitted_after = time.monotonic() - unblocked
                break
            await asyncio.sleep(0.05)
        assert admitted_after is not None
        assert 0.6 <= admitted_after < 4.5  # generous: other load on the machine adds lag
    reading = guard.metrics.snapshot().gauges[0]
    assert reading.sheds >= 1
    assert not reading.tripped


# -- drain ---------------------------------------------------------------------------------
async def test_explicit_drain_spreads_1012_over_the_window() -> None:
    guard = Guard()
    with serve(WSGuardMiddleware(echo, guard=guard)) as server:
        url = server.url + "/ws"
        clients = [await connect(url) for _ in range(4)]
        for ws in clients:
            assert await echoes(ws)
        assert server.loop is not None
        started = time.monotonic()
        drain = asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(guard.drain(window=1.0), server.loop)
        )

        async def closed_at(ws: ClientConnection) -> tuple[float, int, str]:
            code, reason = await closed_by_server(ws)
            return time.monotonic() - started, code, reason

        waiting = asyncio.gather(*(closed_at(ws) for ws in clients))
        await eventually(lambda: guard.draining, what="the drain to start")
        async with connect(url) as late:  # a handshake during the drain
            late_code, late_reason = await closed_by_server(late)
        results = await waiting
        await asyncio.wait_for(drain, 5)
        assert guard.draining
    snap = guard.metrics.snapshot()
    assert (snap.handshakes_admitted, snap.handshakes_rejected) == (4, 1)  # refused, not served
    assert (late_code, bool(RESTARTING.fullmatch(late_reason))) == (1012, True)
    times = sorted(t for t, _, _ in results)
    assert all(code == 1012 and RESTARTING.fullmatch(reason) for _, code, reason in results)
    assert times[0] < 0.3  # the first wave goes at once
    assert times[-1] < 1.5  # within the window (plus scheduling slack)
    assert times[-1] - times[0] >= 0.5  # spread: planned 0, 0.25, 0.5, 0.75 s


async def test_uvicorn_closes_websockets_itself_before_lifespan_shutdown() -> None:
    """What uvicorn does without the signal hook: one wave of bare 1012s, then lifespan."""
    guard = Guard(drain_window=1.0)
    seen_at_lifespan_shutdown: list[tuple[int, dict[int, int]]] = []
    middleware = WSGuardMiddleware(echo, guard=guard)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await middleware(scope, receive, send)
            return

        async def spy() -> Any:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                snap = guard.metrics.snapshot()
                seen_at_lifespan_shutdown.append(
                    (snap.active_connections, dict(snap.closes_by_code))
                )
            return message

        await middleware(scope, spy, send)

    server_cm = serve(app)
    server = server_cm.__enter__()
    try:
        clients = [await connect(server.url + "/ws") for _ in range(3)]
        for ws in clients:
            assert await echoes(ws)
        started = time.monotonic()
        waiting = asyncio.gather(*(closed_by_server(ws) for ws in clients))
        stopping = asyncio.get_running_loop().run_in_executor(None, server.stop)  # type: ignore[attr-defined]
        results = await waiting
        spread = time.monotonic() - started
        await stopping
    finally:
        server_cm.__exit__(None, None, None)
    assert results == [(1012, "")] * 3  # uvicorn's own close: no reason, no hint
    assert spread < 0.5  # one wave
    assert seen_at_lifespan_shutdown == [(0, {1012: 3})]  # all gone before lifespan.shutdown
    assert "restarting" not in guard.metrics.snapshot().closes_by_rule


@contextlib.contextmanager
def _server(window: float, mode: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """``load_server.py`` listening on a free port; killed with its group on the way out."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=SERVER_PATH)
    command = [sys.executable, str(TESTS / "support" / "load_server.py"), str(port), str(window)]
    with running([*command, mode], sig=signal.SIGKILL, env=env) as proc:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("load_server did not start") from None
                time.sleep(0.05)
        yield proc, port


async def test_sigterm_drains_with_restarting_before_uvicorn_shuts_down() -> None:
    with _server(1.0, "hook") as (proc, port):
        url = f"ws://127.0.0.1:{port}/ws"
        clients = [await connect(url) for _ in range(4)]
        for ws in clients:
            assert await echoes(ws)
        started = time.monotonic()

        async def closed_at(ws: ClientConnection) -> tuple[float, int, str]:
            code, reason = await closed_by_server(ws)
            return time.monotonic() - started, code, reason

        waiting = [asyncio.ensure_future(closed_at(ws)) for ws in clients]
        proc.send_signal(signal.SIGTERM)
        # The first wave's close says the drain has started in the server.
        await asyncio.wait(waiting, timeout=5, return_when=asyncio.FIRST_COMPLETED)
        assert any(task.done() for task in waiting), "no close within 5 s of SIGTERM"
        async with connect(url) as late:  # still listening while it drains
            late_code, late_reason = await closed_by_server(late)
        results = await asyncio.gather(*waiting)
        returncode = await asyncio.get_running_loop().run_in_executor(None, proc.wait, 10)
    assert (late_code, bool(RESTARTING.fullmatch(late_reason))) == (1012, True)
    assert all(code == 1012 and RESTARTING.fullmatch(reason) for _, code, reason in results)
    times = sorted(t for t, _, _ in results)
    assert times[-1] < 1.8
    assert times[-1] - times[0] >= 0.5
    assert returncode in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
