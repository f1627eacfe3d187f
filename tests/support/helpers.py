"""Small rules, clocks and drivers shared by the in-process tests."""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from ws_guard import Close, Guard, rules
from ws_guard._core.connection import Connection
from ws_guard.testing import ScriptedWebSocket, _Queue
from ws_guard.types import ASGIApp, Message


class FixedRandom(random.Random):
    """A random source whose ``random()`` is constant, so retry hints are exact."""

    def __init__(self, value: float = 0.5) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


class Lifecycle(rules.Rule):
    """Counts startup/shutdown/admit/release so tests can see when hooks ran."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.events: list[str] = []

    async def startup(self, guard: Guard) -> None:
        self.events.append("startup")

    async def shutdown(self, guard: Guard) -> None:
        self.events.append("shutdown")


class Deny(rules.Rule):
    """Rejects every handshake with a fixed decision."""

    def __init__(
        self,
        code: int = 1008,
        reason: str = "token_invalid",
        retry_after: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.decision = self.breach(code, reason, retry_after)

    async def admit(self, conn: Connection) -> Close | None:
        return self.decision


class Holds(rules.Rule):
    """Admits, and records every release, like a connection-slot rule."""

    stage = rules.Stage.CONNECTION_CAP

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.admitted = 0
        self.released = 0

    async def admit(self, conn: Connection) -> Close | None:
        self.admitted += 1
        return None

    async def release(self, conn: Connection) -> None:
        self.released += 1


class SessionLimit(rules.Rule):
    """Closes a connection ``seconds`` after accept, from the guard's scheduler."""

    def __init__(self, seconds: float, reason: str = "session_expired", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seconds = seconds
        self.reason = reason
        self.opened: list[Connection] = []

    def on_open(self, conn: Connection) -> None:
        self.opened.append(conn)
        decision = self.breach(1008, self.reason)
        conn.call_at(conn.guard.scheduler.now() + self.seconds, lambda: conn.close_soon(decision))


class Checks(rules.Rule):
    """A message rule from a plain function, for custom verdicts."""

    def __init__(self, check: Callable[[Message], Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.check = check

    def checker(self, conn: Connection) -> Callable[[Message], Any]:
        return self.check


class RawServer:
    """A bare ASGI driver for sequences ScriptedWebSocket does not script."""

    def __init__(self, app: ASGIApp, scope: dict[str, Any]) -> None:
        self.app = app
        self.scope = scope
        self.incoming = _Queue()  # any anyio backend
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        return await self.incoming.get()

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    async def run(self, *messages: Message, timeout: float = 2.0) -> None:
        for message in messages:
            self.incoming.put_nowait(message)
        with anyio.fail_after(timeout):
            await self.app(self.scope, self.receive, self.send)


def websocket_scope(path: str = "/ws", **extra: Any) -> dict[str, Any]:
    scope: dict[str, Any] = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "subprotocols": [],
        "extensions": {},
    }
    scope.update(extra)
    return scope


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]],
    timeout: float = 5.0,
    *,
    interval: float = 0.01,
    what: str = "condition",
) -> float:
    """Poll *condition* (a plain or async callable) until it is true.

    Returns the seconds it took; after *timeout* seconds the test fails,
    naming *what*. For a real condition a real server reaches in its own
    time, in place of a fixed sleep that guesses how long that takes.
    """
    started = time.monotonic()
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what} not met within {timeout} s")
        await anyio.sleep(interval)  # any backend: test_rate_limits also runs on trio


async def handshake_outcome(app: ASGIApp, **options: Any) -> dict[str, object]:
    """Connect through *app* and send ``"ping"``; the close ws_guard sent, or the accept.

    *options* go to :class:`ScriptedWebSocket` (headers, query string, ...).
    A ping that comes back means the connection was admitted: the client
    leaves, and the answer is the ``websocket.accept`` message.
    """
    ws = ScriptedWebSocket(app, **options)
    await ws.connect()
    accept = await ws.expect("websocket.accept")
    await ws.send_text("ping")
    reply = await ws.next()
    if reply["type"] == "websocket.send":
        await ws.disconnect()
        reply = accept
    await ws.finished()
    return dict(reply)


def sent_close(ws: ScriptedWebSocket) -> dict[str, Any] | None:
    """The first ``websocket.close`` ws_guard sent *ws*, or None."""
    return next((m for m in ws.sent if m["type"] == "websocket.close"), None)
