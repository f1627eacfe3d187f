"""The core close codes on every ASGI server, each a real process on 127.0.0.1.

Each server in :data:`SERVERS` runs ``tests/support/matrix_app.py`` through
its own command line, and the real ``websockets`` client checks what a
user's client sees: 1008, 1009 and 1003 from message rules, 1013 shed at
the handshake, 1011 for an app crash, 1012 from the drain on SIGTERM and
SIGINT, and ``Guard(reject="http")``. The server's own counters are read
over HTTP (``/stats``) and always hold the RFC code.

Where a server differs, :data:`WIRE` says how, and docs/servers.md says
why: daphne refuses every close code but 1000 and 3000-4999 and drops
every reason, so ws_guard sends the private-range twin (code + 3000) and
the client reads no reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect

from tests.support.server_procs import ServerProcess, server_process
from tests.support.sites import closed_by_server

pytestmark = [pytest.mark.e2e]

#: Every server this module tests, by id (the README's server matrix reads it).
SERVERS = [
    "uvicorn-websockets-sansio",
    "uvicorn-websockets",
    "uvicorn-wsproto",
    "hypercorn-asyncio",
    "hypercorn-trio",
    "granian",
    "daphne",
]

APP = "tests.support.matrix_app:app"
RESTARTING = re.compile(r"restarting; retry-after=(?:1(?:\.[1-9])?|2)")


@dataclass(frozen=True)
class Wire:
    """How a server puts ws_guard's closes on the wire."""

    #: The code goes out as its twin (code + 3000): the server refuses RFC codes.
    twins: bool = False
    #: The reason reaches the client.
    reasons: bool = True

    def code(self, rfc: int) -> int:
        return rfc + 3000 if self.twins and 1000 < rfc < 1015 else rfc

    def reason(self, reason: str) -> str:
        return reason if self.reasons else ""


#: What differs per server (docs/servers.md); absent: RFC codes and reasons as sent.
WIRE = {"daphne": Wire(twins=True, reasons=False)}


def wire(server: str) -> Wire:
    return WIRE.get(server, Wire())


@pytest.fixture(scope="module", params=SERVERS)
def served(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    with server_process(request.param, APP) as running:
        yield running


def stats(server: ServerProcess) -> dict[str, dict[str, int]]:
    data: dict[str, dict[str, int]] = json.loads(server.get("/stats"))
    return data


async def counted(server: ServerProcess, name: str, code: int, before: int) -> int:
    """Poll ``/stats`` until guard *name* counted one more *code* than *before*; the count."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5.0
    while True:
        now = (await asyncio.to_thread(stats, server))[name].get(str(code), 0)
        if now > before or loop.time() > deadline:
            return now
        await asyncio.sleep(0.05)  # bounded poll on the server's counter


async def close_of(ws: ClientConnection, timeout: float = 5.0) -> tuple[int, str]:
    """The server's close code and reason; nothing may arrive before it. 0: no close frame.

    *timeout*: seconds the client waits for the close (or any frame).
    """
    assert await closed_by_server(ws, timeout) == []
    return ws.close_code or 0, ws.close_reason or ""


RULE_CASES = [
    pytest.param("x" * 9, 1009, "message_too_big", id="1009"),
    pytest.param(b"\x00", 1003, "unsupported_data", id="1003"),
    pytest.param("http://x", 1008, "content:no_links", id="1008"),
]


@pytest.mark.parametrize(("bad", "code", "reason"), RULE_CASES)
async def test_message_rule_closes(
    served: ServerProcess, bad: str | bytes, code: int, reason: str
) -> None:
    before = stats(served)["ws"].get(str(code), 0)
    async with connect(served.url("/ws")) as ws:
        await ws.send("12345678")  # at every limit: echoed
        assert await ws.recv() == "12345678"
        await ws.send(bad)
        got = await close_of(ws)
    expected = wire(served.server)
    assert got == (expected.code(code), expected.reason(reason))
    assert await counted(served, "ws", code, before) == before + 1  # the RFC code, everywhere


async def test_shed_at_handshake_closes_1013(served: ServerProcess) -> None:
    before = stats(served)["shed"].get("1013", 0)
    async with connect(served.url("/shed")) as first:
        await first.send("a")
        assert await first.recv() == "a"
        async with connect(served.url("/shed")) as second:  # accepted, then closed
            code, reason = await close_of(second)
        await first.send("b")
        assert await first.recv() == "b"  # the first one lives on
    expected = wire(served.server)
    assert code == expected.code(1013)
    if expected.reasons:
        assert re.fullmatch(r"overloaded; retry-after=\d+(\.\d)?", reason), reason
    else:
        assert reason == ""
    assert await counted(served, "shed", 1013, before) == before + 1


#: Servers without the ``websocket.http.response`` extension (docs/servers.md).
NO_HTTP_RESPONSE = {"daphne"}


async def test_http_reject_mode_sheds_with_503_or_falls_back(served: ServerProcess) -> None:
    before = stats(served)["shed_http"]
    async with connect(served.url("/shed-http")) as first:
        await first.send("a")
        assert await first.recv() == "a"
        if served.server in NO_HTTP_RESPONSE:  # accept-then-close, as without reject="http"
            async with connect(served.url("/shed-http")) as second:
                assert (await close_of(second))[0] == wire(served.server).code(1013)
            counted_as = 1013
        else:
            with pytest.raises(websockets.InvalidStatus) as info:
                async with connect(served.url("/shed-http")):
                    pass  # pragma: no cover
            response = info.value.response
            assert response.status_code == 503
            assert re.fullmatch(r"[1-9][0-9]*", response.headers["Retry-After"])
            assert bytes(response.body or b"").startswith(b"overloaded; retry-after=")
            counted_as = 503
        await first.send("b")
        assert await first.recv() == "b"
    old = before.get(str(counted_as), 0)
    assert await counted(served, "shed_http", counted_as, old) == old + 1


async def test_app_crash_closes_1011(served: ServerProcess) -> None:
    before = stats(served)["crash"].get("1011", 0)
    async with connect(served.url("/crash")) as ws:
        await ws.send("boom")
        got = await close_of(ws)
    expected = wire(served.server)
    assert got == (expected.code(1011), expected.reason("internal_error"))
    assert await counted(served, "crash", 1011, before) == before + 1


@pytest.mark.parametrize("code", [1008, 1001, 3001, 4001])
async def test_app_close_code(served: ServerProcess, code: int) -> None:
    """The app's own close: its code on the wire, as the server can send it; counted as sent."""
    before = stats(served)["crash"].get(str(code), 0)
    async with connect(served.url("/close")) as ws:
        await ws.send(str(code))
        got = await close_of(ws)
    expected = wire(served.server)
    assert got == (expected.code(code), expected.reason("app_close"))
    assert await counted(served, "crash", code, before) == before + 1


async def test_app_close_reason_is_cut_to_123_bytes(served: ServerProcess) -> None:
    # Unguarded, a 140-byte reason drops TCP on granian (1006), as on uvicorn.
    async with connect(served.url("/close")) as ws:
        await ws.send("3001 " + "é" * 70)
        got = await close_of(ws)
    assert got == (3001, wire(served.server).reason("é" * 61))


async def test_app_return_without_close_gives_1000(served: ServerProcess) -> None:
    # Unguarded: granian sends a close frame with no code (1005), daphne keeps
    # the connection open.
    before = stats(served)["crash"].get("1000", 0)
    async with connect(served.url("/return")) as ws:
        await ws.send("bye")
        assert await close_of(ws) == (1000, "")
    assert await counted(served, "crash", 1000, before) == before + 1


async def test_client_close_is_counted(served: ServerProcess) -> None:
    stats_before = stats(served)["ws"]
    async with connect(served.url("/ws")) as ws:
        await ws.send("hi")
        assert await ws.recv() == "hi"
    # hypercorn reports a client's 1000 as 1006 (docs/servers.md); the others as sent.
    code = 1006 if served.server.startswith("hypercorn") else 1000
    before = stats_before.get(str(code), 0)
    assert await counted(served, "ws", code, before) == before + 1


#: Each server's own message size limit in bytes (its default) and what the
#: client reads for a message one byte over it (docs/servers.md): daphne drops
#: TCP, granian sends a close frame without a code. uvicorn and hypercorn close
#: with 1009 (tests/e2e/test_server_memory.py, with the limit set lower).
SERVER_SIZE_LIMITS = {
    "daphne": (1024 * 1024, (1006, "")),
    "granian": (16 * 1024 * 1024, (1005, "")),
}


@pytest.mark.parametrize("server", list(SERVER_SIZE_LIMITS))
async def test_a_message_over_the_servers_own_limit_never_reaches_the_guard(server: str) -> None:
    limit, over = SERVER_SIZE_LIMITS[server]
    expected = wire(server)
    cases = [
        (limit + 1, over, over[0]),  # the server's own close, counted as the client's
        # At the limit the server passes it on, and MaxMessageSize(8) closes it.
        (limit, (expected.code(1009), expected.reason("message_too_big")), 1009),
    ]
    with server_process(server, APP) as running:
        for size, seen, counted_as in cases:
            before = stats(running)["ws"].get(str(counted_as), 0)
            async with connect(running.url("/ws"), close_timeout=5) as ws:
                with contextlib.suppress(websockets.ConnectionClosed):  # granian closes mid-send
                    await asyncio.wait_for(ws.send("x" * size), 20)
                assert await asyncio.wait_for(close_of(ws), 20) == seen, size
            assert await counted(running, "ws", counted_as, before) == before + 1


#: Servers where ``Guard(drain_signals=...)`` drains before the server closes
#: WebSockets itself. With a signal to its main process, granian closes every
#: WebSocket at once (1006 within milliseconds; its worker handles the signal
#: in its event loop, beside ws_guard's handler), and hypercorn's CLI tells its
#: worker process through an event, not a signal, so ws_guard's handler never
#: runs and the clients get 1011 with no reason after hypercorn's 3 s graceful
#: timeout. There ``guard.drain()`` comes first (docs/servers.md).
DRAIN_BY_SIGNAL = ["uvicorn-websockets-sansio", "uvicorn-websockets", "uvicorn-wsproto", "daphne"]
DRAIN_FIRST = [server for server in SERVERS if server not in DRAIN_BY_SIGNAL]
SIGNALS = [pytest.param(signal.SIGTERM, id="SIGTERM"), pytest.param(signal.SIGINT, id="SIGINT")]


def assert_restarting(server: str, closes: list[tuple[int, str]]) -> None:
    expected = wire(server)
    for code, reason in closes:
        assert code == expected.code(1012)
        if expected.reasons:
            assert RESTARTING.fullmatch(reason), reason
        else:
            assert reason == ""


async def open_clients(running: ServerProcess, n: int = 2) -> list[ClientConnection]:
    clients = [await connect(running.url("/ws")) for _ in range(n)]
    for ws in clients:
        await ws.send("up")
        assert await ws.recv() == "up"
    return clients


@pytest.mark.parametrize("server", DRAIN_BY_SIGNAL)
@pytest.mark.parametrize("sig", SIGNALS)
async def test_signal_drains_with_1012(server: str, sig: signal.Signals) -> None:
    # SIGKILL on the way out: the test sends the signal under test itself.
    with server_process(server, APP, sig=signal.SIGKILL) as running:
        clients = await open_clients(running)
        running.process.send_signal(sig)  # the leader only, as `kill` or a terminal's ^C
        closes = [await asyncio.wait_for(close_of(ws), 10) for ws in clients]
        returncode = await asyncio.to_thread(running.process.wait, 20)
    assert_restarting(server, closes)
    assert returncode in (0, -sig), returncode


@pytest.mark.parametrize("server", DRAIN_FIRST)
@pytest.mark.parametrize("sig", SIGNALS)
async def test_drain_then_signal_closes_1012(server: str, sig: signal.Signals) -> None:
    with server_process(server, APP, sig=signal.SIGKILL) as running:
        clients = await open_clients(running)
        after = json.loads(await asyncio.to_thread(running.get, "/drain"))
        closes = [await asyncio.wait_for(close_of(ws), 10) for ws in clients]
        running.process.send_signal(sig)
        returncode = await asyncio.to_thread(running.process.wait, 20)
    assert_restarting(server, closes)
    assert after["ws"]["1012"] == 2  # counted before drain() returned
    assert returncode in (0, -sig), returncode


#: What open clients get from a signal alone, with ``drain_signals`` set, where
#: it cannot drain first (docs/servers.md, "Shutdown on hypercorn and granian").
SIGNAL_ALONE = {
    # hypercorn waits its graceful_timeout (3 s) for the connections to end, then
    # cancels the app: 1011 without a reason (asyncio), no close frame (trio).
    "hypercorn-asyncio": {(1011, "")},
    "hypercorn-trio": {(1006, "")},
    # granian stops its worker at once: ws_guard's drain reaches some clients first.
    "granian": {(1006, ""), (1012, "restarting")},
}


@pytest.mark.parametrize("server", DRAIN_FIRST)
async def test_a_signal_alone_where_drain_must_come_first(server: str) -> None:
    """Without ``guard.drain()`` first: what a user gets, and hypercorn's 3 s wait."""
    assert set(SIGNAL_ALONE) == set(DRAIN_FIRST)
    with server_process(server, APP, sig=signal.SIGKILL) as running:
        clients = await open_clients(running)
        loop = asyncio.get_running_loop()
        start = loop.time()
        running.process.send_signal(signal.SIGTERM)
        if server == "hypercorn-asyncio" and sys.version_info >= (3, 13):
            # Measured on Python 3.13 (hypercorn 0.18): the worker never ends
            # the open WebSockets (no close frame, the socket held open for
            # 40 s and more) until it is killed; drain first there too.
            for ws in clients:
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(ws.recv(), 6)
                ws.transport.abort()  # the server is killed on the way out
            return
        # hypercorn closes after its 3 s graceful_timeout: 12 s leaves room
        # for a machine busy with a coverage run (5 s was not always enough).
        closes = [await asyncio.wait_for(close_of(ws, 12.0), 15) for ws in clients]
        waited = loop.time() - start
        returncode = await asyncio.to_thread(running.process.wait, 20)
    seen = {(int(code), reason.partition(";")[0]) for code, reason in closes}
    assert seen <= SIGNAL_ALONE[server], closes
    if server.startswith("hypercorn"):
        assert waited >= 2.5, waited  # its graceful_timeout, not ws_guard's drain
    assert returncode == 0, returncode
