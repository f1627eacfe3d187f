"""Real ASGI servers on 127.0.0.1 for end-to-end tests.

Each server runs in its own thread with its own event loop, on a free port,
so tests talk to it over real TCP with the real ``websockets`` client and can
still read the guard's metrics directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from ws_guard.types import ASGIApp

#: uvicorn's WebSocket implementations, all run by the e2e suite.
UVICORN_WS = ("websockets-sansio", "websockets", "wsproto")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerThread:
    """A server running in a thread; ``url`` is ``ws://127.0.0.1:<port>``."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"ws://127.0.0.1:{port}"
        self.http_url = f"http://127.0.0.1:{port}"
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None

    def call(self, coro: Any, timeout: float = 10.0) -> Any:
        """Run a coroutine on the server's loop (e.g. ``guard.drain()``)."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


class UvicornThread(ServerThread):
    def __init__(self, app: ASGIApp, ws: str = "websockets-sansio", **config: Any) -> None:
        super().__init__(free_port())
        config.setdefault("log_level", "warning")
        config.setdefault("lifespan", "on")
        self.config = uvicorn.Config(app, host="127.0.0.1", port=self.port, ws=ws, **config)
        self.server = uvicorn.Server(self.config)

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.serve())
        self.loop.close()

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"uvicorn-{self.port}")
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(10)


class HypercornThread(ServerThread):
    def __init__(self, app: ASGIApp) -> None:
        super().__init__(free_port())
        self.app = app
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None

    def _run(self) -> None:
        from hypercorn.asyncio import serve
        from hypercorn.config import Config

        config = Config()
        config.bind = [f"127.0.0.1:{self.port}"]
        config.loglevel = "WARNING"
        config.accesslog = None
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)

        async def main() -> None:
            self._stop = asyncio.Event()
            self.loop.call_soon(self._started.set)  # type: ignore[union-attr]
            await serve(self.app, config, shutdown_trigger=self._stop.wait)  # type: ignore[arg-type]

        self.loop.run_until_complete(main())
        self.loop.close()

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"hypercorn-{self.port}")
        self.thread.start()
        if not self._started.wait(10):
            raise RuntimeError("hypercorn did not start")
        deadline = time.monotonic() + 10
        while True:  # wait until the port accepts connections
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("hypercorn did not listen")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        if self.thread is not None:
            self.thread.join(10)


@contextlib.contextmanager
def serve(app: ASGIApp, server: str = "websockets-sansio", **config: Any) -> Iterator[ServerThread]:
    """Serve *app* on uvicorn (named by its ws implementation) or ``"hypercorn"``."""
    thread: ServerThread
    if server == "hypercorn":
        thread = HypercornThread(app)
        thread.start()
    else:
        thread = UvicornThread(app, ws=server, **config)
        thread.start()
    try:
        yield thread
    finally:
        thread.stop()  # type: ignore[attr-defined]
