"""``SlowConsumer`` on real uvicorn: a client that stops reading while the app streams.

The client is a raw socket that completes the handshake and reads nothing
(tests/support/slow_reader.py), so the close is read on the server's side
first: the guard's counters and what the app's send and receive returned.
Then the client reads everything and finds the close frame.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from typing import Any

import pytest

from tests.support.hypercorn import http, hypercorn_trio
from tests.support.servers import UVICORN_WS, serve
from tests.support.slow_reader import read_to_close, stalled_client
from ws_guard import Guard, WSGuardMiddleware, rules

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.filterwarnings("ignore:The `websockets` implementation is deprecated"),
    pytest.mark.filterwarnings("ignore:websockets.legacy is deprecated"),
    pytest.mark.filterwarnings("ignore:remove second argument of ws_handler"),
]

LIMIT = 0.3
#: How soon after the limit the app's send must return: the deadline fires on
#: the loop's timer, so this is scheduling slack on a loaded machine.
PROMPT = 0.5
CHUNK = b"x" * 16384


async def lifespan(receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        await send({"type": message["type"] + ".complete"})
        if message["type"] == "lifespan.shutdown":
            return


class Streamer:
    """Streams 16 KiB frames; after a send that was held, reads once and returns."""

    def __init__(self) -> None:
        self.held: float | None = None
        self.sends = 0
        self.after: Any = None
        self.done = threading.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        await receive()
        await send({"type": "websocket.accept"})
        try:
            while True:
                started = time.monotonic()
                await send({"type": "websocket.send", "bytes": CHUNK})
                waited = time.monotonic() - started
                self.sends += 1
                if waited > LIMIT / 2:  # only a client that does not read holds a send this long
                    self.held = waited
                    self.after = await receive()
                    return
        finally:
            self.done.set()


@pytest.mark.parametrize("kind", [*UVICORN_WS, "hypercorn"])
def test_a_client_that_stops_reading_is_closed_and_the_send_returns(kind: str) -> None:
    guard = Guard(rules=[rules.SlowConsumer(LIMIT)])
    app = Streamer()
    with serve(WSGuardMiddleware(app, guard=guard), kind) as server:
        sock = stalled_client(server.port)
        try:
            assert app.done.wait(10), "the app's send never returned"
            assert app.held is not None
            assert LIMIT <= app.held < LIMIT + PROMPT
            assert app.after == {
                "type": "websocket.disconnect",
                "code": 1008,
                "reason": "slow_consumer",
            }
            snap = guard.metrics.snapshot()
            assert dict(snap.closes_by_rule) == {"slow_consumer": 1}
            assert dict(snap.closes_by_code) == {1008: 1}
            assert snap.dropped_sends == 1  # the held send; the app sent nothing after it
            # The client reads again: what the server buffered, then the close frame.
            frames, close = read_to_close(sock)
        finally:
            sock.close()
        assert close == (1008, "slow_consumer")
        # Every send that returned. The held one is dropped where the server
        # waits before it writes (sansio, wsproto); the legacy stack and
        # hypercorn write first and then wait for the buffer to drain.
        assert frames == app.sends - (0 if kind in ("websockets", "hypercorn") else 1)
        deadline = time.monotonic() + 5
        while guard.metrics.snapshot().active_connections and time.monotonic() < deadline:
            time.sleep(0.01)
        assert guard.metrics.snapshot().active_connections == 0


@pytest.mark.parametrize("kind", ["websockets-sansio"])
def test_shadow_mode_counts_the_slow_client_once_and_keeps_it(kind: str) -> None:
    guard = Guard(rules=[rules.SlowConsumer(LIMIT, enforce=False)])
    app = Streamer()
    with serve(WSGuardMiddleware(app, guard=guard), kind) as server:
        sock = stalled_client(server.port)
        try:
            deadline = time.monotonic() + 5
            while not guard.metrics.snapshot().shadow_breaches_by_rule:
                assert time.monotonic() < deadline, "no shadow breach counted"
                time.sleep(0.01)
            time.sleep(3 * LIMIT)  # three more limits of waiting: still one report, still held
            snap = guard.metrics.snapshot()
            assert dict(snap.shadow_breaches_by_rule) == {"slow_consumer": 1}
            assert dict(snap.closes_by_rule) == {}
            assert not app.done.is_set()
            # The client reads: the held send goes out, then the app reads the client's close.
            sock.settimeout(0.05)
            deadline = time.monotonic() + 5
            while app.held is None:
                assert time.monotonic() < deadline, "the held send never went out"
                with contextlib.suppress(TimeoutError):
                    sock.recv(1 << 20)
            assert not app.done.is_set()  # the app now waits in receive()
        finally:
            sock.close()
        assert app.done.wait(5)
        assert app.after["type"] == "websocket.disconnect"
        assert guard.metrics.snapshot().dropped_sends == 0


def test_on_hypercorn_trio_the_close_is_counted_but_the_shielded_send_waits() -> None:
    # hypercorn -k trio writes inside a shielded cancel scope: nothing can end
    # the pending send (docs/servers.md, "Backpressure and slow readers").
    with hypercorn_trio("tests.support.slow_trio_app:app") as (base, _):
        sock = stalled_client(int(base.rpartition(":")[2]))
        try:
            deadline = time.monotonic() + 10
            while (stats := json.loads(http(base, "/stats")))["closes"] == {}:
                assert time.monotonic() < deadline, "no close counted"
                time.sleep(0.02)
            assert stats["closes"] == {"slow_consumer": 1}
            assert stats["held"] is None  # the send still waits
            assert stats["pending_for"] >= LIMIT
            frames, close = read_to_close(sock)  # the client reads: the send goes out
        finally:
            sock.close()
        assert close == (1008, "slow_consumer")
        assert frames > 0
        deadline = time.monotonic() + 5
        while (stats := json.loads(http(base, "/stats")))["after"] is None:
            assert time.monotonic() < deadline, "the app never read the close"
            time.sleep(0.02)
        assert stats["after"] == "slow_consumer"
        assert stats["held"] >= LIMIT
