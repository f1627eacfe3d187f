"""Testing helpers: drive a guarded ASGI app with scripted WebSocket messages.

:class:`ScriptedWebSocket` plays the ASGI server. Tests push client
messages and read exactly what the app and the guard sent back, with no
network and no sleeps, so close codes and message sequences can be asserted
to the byte.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from ._types import ASGIApp, Message, Scope


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
        self._incoming: asyncio.Queue[Message] = asyncio.Queue()
        self._outgoing: asyncio.Queue[Message] = asyncio.Queue()
        #: Every message the app (through the guard) sent, in order.
        self.sent: list[Message] = []
        self._closed = False
        self._client_gone = False
        self._raise_after_close = raise_on_send_after_close
        self.task: asyncio.Task[None] | None = None

    async def _receive(self) -> Message:
        return await self._incoming.get()

    async def _send(self, message: Message) -> None:
        if (self._closed or self._client_gone) and self._raise_after_close:
            raise OSError("send after close")  # what real servers do for a gone client
        if message["type"] in ("websocket.close", "websocket.http.response.body"):
            self._closed = True
        self.sent.append(message)
        await self._outgoing.put(message)

    async def connect(self) -> None:
        """Start the app and deliver ``websocket.connect``."""
        await self._incoming.put({"type": "websocket.connect"})
        self.task = asyncio.ensure_future(self.app(self.scope, self._receive, self._send))

    async def send_text(self, text: str) -> None:
        await self._incoming.put({"type": "websocket.receive", "text": text})

    async def send_bytes(self, data: bytes) -> None:
        await self._incoming.put({"type": "websocket.receive", "bytes": data})

    async def disconnect(self, code: int = 1000, reason: str = "") -> None:
        """The client leaves; with ``raise_on_send_after_close`` later sends raise OSError."""
        self._client_gone = True
        await self._incoming.put({"type": "websocket.disconnect", "code": code, "reason": reason})

    async def next(self, timeout: float = 2.0) -> Message:
        """The next message sent to the server."""
        return await asyncio.wait_for(self._outgoing.get(), timeout)

    async def expect(self, kind: str, timeout: float = 2.0, **fields: Any) -> Message:
        """The next sent message, checked to be of *kind* with *fields*."""
        message = await self.next(timeout)
        if message["type"] != kind or any(message.get(k) != v for k, v in fields.items()):
            raise AssertionError(f"expected {kind} {fields}, got {message}")
        return message

    async def finished(self, timeout: float = 2.0) -> None:
        """Wait for the app (and the guard around it) to return; re-raises its error."""
        if self.task is None:
            raise RuntimeError("connect() was not called")
        await asyncio.wait_for(self.task, timeout)

    @property
    def closed(self) -> bool:
        return self._closed
