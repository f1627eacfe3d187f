"""Testing helpers: drive a guarded ASGI app with scripted WebSocket messages.

:class:`ScriptedWebSocket` plays the ASGI server. Tests push client
messages and read exactly what the app and the guard sent back, with no
network and no sleeps, so close codes and message sequences can be asserted
to the byte. It runs on asyncio and on trio (anyio events; the app
runs as a detached task, see ``ws_guard._core.tasks``).

:class:`ManualClock` is the clock such tests give the guard
(``Guard(clock=ManualClock())``): no timer runs, the test moves the clock
and calls ``guard.scheduler.run_due()``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from typing import Any

import anyio

from ws_guard._clocks import ManualClock
from ws_guard._core.tasks import Job, spawn, wait_done
from ws_guard.types import ASGIApp, Message, Scope

__all__ = ["ManualClock", "ScriptedWebSocket"]


class _Queue:
    """An unbounded FIFO of messages on any anyio backend (``asyncio.Queue``'s names).

    A deque and an event rather than an anyio memory stream: a stream left
    unclosed warns (``ResourceWarning``) when collected, and a scripted
    connection has no moment at which closing it would be right.
    """

    def __init__(self) -> None:
        self._items: deque[Message] = deque()
        # Made on first wait, inside the event loop (anyio picks the backend then).
        self._ready: anyio.Event | None = None

    def put_nowait(self, message: Message) -> None:
        self._items.append(message)
        if self._ready is not None:
            self._ready.set()

    async def put(self, message: Message) -> None:
        self.put_nowait(message)

    async def get(self) -> Message:
        while not self._items:
            ready = self._ready
            if ready is None or ready.is_set():
                ready = self._ready = anyio.Event()
            await ready.wait()
            if self._ready is ready:  # set, of no further use: an idle queue holds no event
                self._ready = None
        return self._items.popleft()


class ScriptedWebSocket:
    """An in-process ASGI server for one WebSocket connection.

    >>> ws = ScriptedWebSocket(app, "/ws")          # doctest: +SKIP
    >>> await ws.connect()                           # doctest: +SKIP
    >>> await ws.expect("websocket.accept")          # doctest: +SKIP
    """

    def __init__(
        self,
        app: ASGIApp,
        path: str = "/ws",
        *,
        query_string: bytes = b"",
        headers: Iterable[tuple[bytes, bytes]] = (),
        client: tuple[str, int] | None = ("127.0.0.1", 50000),
        subprotocols: Iterable[str] = (),
        http_response: bool = True,
        raise_on_send_after_close: bool = False,
    ) -> None:
        self.app = app
        extensions: dict[str, Any] = {"websocket.http.response": {}} if http_response else {}
        self.scope: Scope = {
            "type": "websocket",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "scheme": "ws",
            "server": ("127.0.0.1", 8000),
            "client": client,
            "root_path": "",
            "path": path,
            "raw_path": path.encode(),
            "query_string": query_string,
            "headers": list(headers),
            "subprotocols": list(subprotocols),
            "extensions": extensions,
            "state": {},
        }
        self._incoming = _Queue()
        self._outgoing = _Queue()
        #: Every message the app (through the guard) sent, in order.
        self.sent: list[Message] = []
        self._closed = False
        self._client_gone = False
        self._raise_after_close = raise_on_send_after_close
        #: The app's task (an ``asyncio.Task`` on asyncio).
        self.task: Job[None] | None = None

    async def _receive(self) -> Message:
        return await self._incoming.get()

    async def _send(self, message: Message) -> None:
        if (self._closed or self._client_gone) and self._raise_after_close:
            raise OSError("send after close")  # what real servers do for a gone client
        if message["type"] in ("websocket.close", "websocket.http.response.body"):
            self._closed = True
        self.sent.append(message)
        self._outgoing.put_nowait(message)

    async def connect(self) -> None:
        """Start the app and deliver ``websocket.connect``."""
        self._incoming.put_nowait({"type": "websocket.connect"})
        self.task = spawn(self.app(self.scope, self._receive, self._send))

    async def send_text(self, text: str) -> None:
        self._incoming.put_nowait({"type": "websocket.receive", "text": text})

    async def send_bytes(self, data: bytes) -> None:
        self._incoming.put_nowait({"type": "websocket.receive", "bytes": data})

    async def disconnect(self, code: int = 1000, reason: str = "") -> None:
        """The client leaves; with ``raise_on_send_after_close`` later sends raise OSError."""
        self._client_gone = True
        self._incoming.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})

    async def next(self, timeout: float = 2.0) -> Message:  # noqa: ASYNC109 - public API
        """The next message sent to the server."""
        with anyio.fail_after(timeout):
            return await self._outgoing.get()

    async def expect(self, kind: str, timeout: float = 2.0, **fields: Any) -> Message:  # noqa: ASYNC109
        """The next sent message, checked to be of *kind* with *fields*."""
        message = await self.next(timeout)
        if message["type"] != kind or any(message.get(k) != v for k, v in fields.items()):
            raise AssertionError(f"expected {kind} {fields}, got {message}")
        return message

    async def finished(self, timeout: float = 2.0) -> None:  # noqa: ASYNC109
        """Wait for the app (and the guard around it) to return; re-raises its error."""
        if self.task is None:
            raise RuntimeError("connect() was not called")
        task = self.task
        if isinstance(task, asyncio.Future):
            await asyncio.wait_for(task, timeout)
            return
        with anyio.fail_after(timeout):
            await wait_done(task)
        task.result()

    @property
    def closed(self) -> bool:
        return self._closed
