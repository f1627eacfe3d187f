"""A guarded stream for the slow-consumer test on ``hypercorn -k trio``.

``/ws`` accepts and streams 16 KiB frames; a send held past half the
``SlowConsumer`` limit makes the app read once and stop. ``GET /stats``
answers, as JSON, the guard's close counts and what the app saw: how long
its held send waited (``null`` while it still waits) and the reason of the
disconnect it read.
"""

from __future__ import annotations

import json
import time
from typing import Any

from ws_guard import Guard, WSGuardMiddleware, rules
from ws_guard.types import Receive, Scope, Send

LIMIT = 0.3
guard = Guard(rules=[rules.SlowConsumer(LIMIT)], paths=["/ws"])
seen: dict[str, Any] = {"pending_since": None, "held": None, "after": None}


async def _stream(receive: Receive, send: Send) -> None:
    await receive()
    await send({"type": "websocket.accept"})
    while True:
        started = seen["pending_since"] = time.monotonic()
        await send({"type": "websocket.send", "bytes": b"x" * 16384})
        seen["pending_since"] = None
        waited = time.monotonic() - started
        if waited > LIMIT / 2:
            seen["held"] = waited
            seen["after"] = (await receive()).get("reason")
            return


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "websocket":
        await _stream(receive, send)
        return
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    since = seen["pending_since"]
    body = {
        "closes": dict(guard.metrics.snapshot().closes_by_rule),
        "pending_for": None if since is None else time.monotonic() - since,
        "held": seen["held"],
        "after": seen["after"],
    }
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


app = WSGuardMiddleware(_app, guard=guard)
