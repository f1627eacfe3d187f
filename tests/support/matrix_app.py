"""The guarded app every server of the server matrix runs in its own process.

- ``/ws``: an echo behind message rules: ``MaxMessageSize(8)`` (1009),
  ``MessageTypes(binary=False)`` (1003), ``Content(no_links)`` (1008). The
  same guard drains on SIGTERM and SIGINT (window 0.2 s), so open clients
  get 1012 before the server closes them itself.
- ``/crash``: accepts, reads one message, raises (1011).
- ``/close``: accepts, reads one message ``"<code>"`` or
  ``"<code> <reason>"``, closes with that code and reason (``app_close``
  by default): the app's own close (counted on the ``crash`` guard, which
  guards no rule).
- ``/return``: accepts, reads one message, returns without closing.
- ``/shed``: an echo behind ``load.ConnectionCount(limit=1)``: the second
  open connection is shed at the handshake (1013).
- ``/shed-http``: the same with ``Guard(reject="http")``: HTTP 503 where the
  server has ``websocket.http.response``, accept-then-close where not.
- ``/drain``: ``guard.drain()`` of the ``/ws`` guard, answered (as ``/stats``) once
  it returned: the drain-first shutdown docs/servers.md gives for servers
  whose signal handling ws_guard cannot run ahead of (granian, hypercorn).
- ``GET /stats``: each guard's ``closes_by_code`` as JSON
  (``{"ws": {"1009": 1}, ...}``), so a test reads the server's own counters.

Served as ``tests.support.matrix_app:app`` (``tests/support/server_procs.py``).
"""

from __future__ import annotations

import json

from tests.support.apps import (
    crash_after_first_message,
    echo,
    lifespan,
    return_after_first_message,
)
from ws_guard import Guard, WSGuardMiddleware, load, rules
from ws_guard.types import Receive, Scope, Send

#: Seconds the SIGTERM/SIGINT drain spreads its closes over.
DRAIN_WINDOW = 0.2

guards = {
    "ws": Guard(
        rules=[
            rules.MaxMessageSize(8),
            rules.MessageTypes(binary=False),
            rules.Content(lambda text: "http://" not in text, name="no_links"),
        ],
        paths=["/ws"],
        drain_window=DRAIN_WINDOW,
        drain_signals=["SIGTERM", "SIGINT"],
    ),
    "crash": Guard(paths=["/crash", "/close", "/return"]),
    "shed": Guard(load=[load.ConnectionCount(limit=1)], paths=["/shed"]),
    "shed_http": Guard(load=[load.ConnectionCount(limit=1)], paths=["/shed-http"], reject="http"),
}


async def _close_as_asked(receive: Receive, send: Send) -> None:
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    message = await receive()
    code, _, reason = message["text"].partition(" ")
    await send({"type": "websocket.close", "code": int(code), "reason": reason or "app_close"})
    await receive()  # websocket.disconnect


async def _inner(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    if scope["type"] == "http":
        if scope["path"] == "/drain":
            await guards["ws"].drain()
        stats = {
            name: {str(code): n for code, n in guard.metrics.snapshot().closes_by_code.items()}
            for name, guard in guards.items()
        }
        body = json.dumps(stats).encode() if scope["path"] in ("/stats", "/drain") else b"ok"
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})
        return
    if scope["path"] == "/crash":
        await crash_after_first_message(scope, receive, send)
    elif scope["path"] == "/return":
        await return_after_first_message(scope, receive, send)
    elif scope["path"] == "/close":
        await _close_as_asked(receive, send)
    else:
        await echo(scope, receive, send)


app = _inner
for _guard in guards.values():
    app = WSGuardMiddleware(app, guard=_guard)
