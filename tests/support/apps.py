"""Small raw-ASGI apps the tests guard: echo, crash, early return, chatty."""

from __future__ import annotations

import asyncio

import anyio

from ws_guard.types import ASGIApp, Message, Receive, Scope, Send


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    """Accept, echo every message, end on disconnect."""
    if scope["type"] != "websocket":
        await http_ok(scope, receive, send)
        return
    message = await receive()
    assert message["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await send(echoed(message))


def echoed(message: Message) -> Message:
    """The ``websocket.send`` that gives a received ``websocket.receive`` back, text or bytes."""
    if message.get("text") is not None:
        return {"type": "websocket.send", "text": message["text"]}
    return {"type": "websocket.send", "bytes": message["bytes"]}


async def http_ok(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


class Recorder:
    """Accept, record every message handed to the app, echo; end on disconnect.

    ``after_disconnect`` messages are sent once the app has seen the
    disconnect, to show what a careless app does after ws_guard closed.
    """

    def __init__(self, *, after_disconnect: tuple[Message, ...] = ()) -> None:
        self.scopes: list[Scope] = []
        self.received: list[Message] = []
        self.after_disconnect = after_disconnect
        self.returned = False
        self.receive_after_end: Message | None = None

    @property
    def calls(self) -> int:
        return len(self.scopes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await http_ok(scope, receive, send)
            return
        self.scopes.append(scope)
        self.received.append(await receive())
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            self.received.append(message)
            if message["type"] == "websocket.disconnect":
                for late in self.after_disconnect:
                    await send(dict(late))
                if self.after_disconnect:
                    self.receive_after_end = await receive()
                self.returned = True
                return
            await send(echoed(message))


async def crash_after_first_message(scope: Scope, receive: Receive, send: Send) -> None:
    """Accept, read one message, then fail like a buggy handler."""
    if scope["type"] != "websocket":
        await http_ok(scope, receive, send)
        return
    await receive()
    await send({"type": "websocket.accept"})
    await receive()
    raise RuntimeError("handler bug")


async def crash_before_accept(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "websocket":
        await http_ok(scope, receive, send)
        return
    await receive()
    raise RuntimeError("handler bug before accept")


async def return_after_first_message(scope: Scope, receive: Receive, send: Send) -> None:
    """Accept, read one message, return without closing."""
    if scope["type"] != "websocket":
        await http_ok(scope, receive, send)
        return
    await receive()
    await send({"type": "websocket.accept"})
    await receive()


async def lifespan(receive: Receive, send: Send) -> None:
    """Answer a lifespan scope's startup and shutdown, then return."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def subject_echo(http: ASGIApp, *, stuck_path: str | None = None) -> ASGIApp:
    """An app for a server process: lifespan answered, HTTP by *http*, WebSockets echoed.

    Each text comes back as ``"<subject>:<text>"``, the subject being what the
    guard in front says the client is (``scope["ws_guard"].subject``). On
    *stuck_path* the handler never returns once its connection closed, as a
    buggy app's would (what ``app_exit_timeout`` is for).
    """

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] == "http":
            await http(scope, receive, send)
            return
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                if scope["path"] == stuck_path:
                    await anyio.sleep_forever()
                return
            subject = scope["ws_guard"].subject
            await send({"type": "websocket.send", "text": f"{subject}:{message.get('text')}"})

    return app


class Held:
    """Accept, then hold the connection, reading nothing, until ``release`` is set (asyncio)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await self.release.wait()
