"""Tools for the fault-injection tests: load, timed handshakes, a flaky key server.

``Chatters`` keeps a few real clients sending and awaiting their echo while a
test breaks something, and records every round trip, so a test can assert
that the fault never reached the connections already open. ``attempt`` times
one handshake and reports how it ended. ``FlakyJWKS`` is a JWKS endpoint that
can answer late, go away and come back on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support.jwks_server import jwk
from tests.support.servers import ServerThread, free_port

T = TypeVar("T")


# -- the server's side, read on the server's own loop -------------------------------
async def on_server(server: ServerThread, read: Callable[[], T]) -> T:
    """Evaluate *read* on the server's loop without blocking this one."""

    async def run() -> T:
        return read()

    assert server.loop is not None
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(run(), server.loop))


async def until(check: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> float:
    """Poll *check* (sync or async) until truthy; returns the seconds it took."""
    start = time.monotonic()
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(0.02)


# -- the clients' side -----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Outcome:
    """How one handshake ended: ``opened`` with an echo, or a close code and reason."""

    opened: bool
    code: int | None
    reason: str
    seconds: float


async def attempt(url: str, headers: dict[str, str] | None = None, timeout: float = 15) -> Outcome:
    """Connect, send one message, and report the echo or the close, with the time taken."""
    start = time.monotonic()
    async with connect(url, additional_headers=headers, open_timeout=timeout) as ws:
        try:
            await ws.send("hello")
            reply = await asyncio.wait_for(ws.recv(), timeout)
        except ConnectionClosed:
            assert ws.close_code is not None, "closed without a close frame"
            return Outcome(False, ws.close_code, ws.close_reason or "", time.monotonic() - start)
        assert reply == "hello"
        return Outcome(True, None, "", time.monotonic() - start)


class Chatters:
    """Clients that send and await their echo in a loop, timing every round trip."""

    def __init__(self, pause: float = 0.01) -> None:
        self.pause = pause
        #: (monotonic time sent, round-trip seconds) for every echo received.
        self.samples: list[tuple[float, float]] = []
        self.sockets: list[ClientConnection] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()

    async def add(self, url: str, count: int = 1, headers: dict[str, str] | None = None) -> None:
        for _ in range(count):
            ws = await connect(url, additional_headers=headers, open_timeout=10)
            self.sockets.append(ws)
            self._tasks.append(asyncio.create_task(self._chat(ws)))

    async def _chat(self, ws: ClientConnection) -> None:
        i = 0
        while not self._stop.is_set():
            sent = time.monotonic()
            await ws.send(f"c{i}")
            reply = await asyncio.wait_for(ws.recv(), 10)
            assert reply == f"c{i}", reply
            self.samples.append((sent, time.monotonic() - sent))
            i += 1
            await asyncio.sleep(self.pause)

    def between(self, start: float, end: float) -> list[float]:
        """Round trips of the messages sent in ``[start, end]``."""
        return [rtt for sent, rtt in self.samples if start <= sent <= end]

    def assert_prompt(self, start: float, end: float, bound: float, at_least: int = 1) -> None:
        """At least *at_least* echoes were sent in ``[start, end]``, each back within *bound*."""
        rtts = self.between(start, end)
        assert len(rtts) >= at_least, f"only {len(rtts)} echoes in {end - start:.2f} s"
        assert max(rtts) < bound, f"slowest echo took {max(rtts):.3f} s"

    async def stop(self) -> None:
        """Stop chatting (re-raising any client's failure) and close cleanly."""
        self._stop.set()
        try:
            await asyncio.gather(*self._tasks)
        finally:
            for ws in self.sockets:
                await ws.close()


# -- a JWKS endpoint that can be slow or gone ------------------------------------------
class FlakyJWKS:
    """Serves ``{"keys": [...]}`` at ``/jwks``; ``delay`` makes it late, ``stop`` takes it away.

    ``start`` after ``stop`` listens on the same port again, so a client's
    configured URL keeps working once the endpoint is back.
    """

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/jwks"
        self.keys: dict[str, Any] = {}
        self.delay = 0.0
        self.hits = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def publish(self, **keys: Any) -> None:
        self.keys = dict(keys)

    def start(self) -> None:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                endpoint.hits += 1
                if endpoint.delay:
                    time.sleep(endpoint.delay)
                body = json.dumps({"keys": [jwk(k, kid) for kid, k in endpoint.keys.items()]})
                # The client may have given up waiting: that is the point of a delay.
                with contextlib.suppress(OSError):
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.end_headers()
                    self.wfile.write(body.encode())

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Close the listening socket: new fetches get connection refused."""
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


@contextlib.contextmanager
def flaky_jwks(**keys: Any) -> Iterator[FlakyJWKS]:
    endpoint = FlakyJWKS()
    endpoint.publish(**keys)
    endpoint.start()
    try:
        yield endpoint
    finally:
        endpoint.delay = 0.0
        endpoint.stop()
