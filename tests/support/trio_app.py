"""A guarded echo for the trio end-to-end tests, served by ``hypercorn -k trio``.

Two guards, one per path: ``/ws`` takes a query token and has a message
rate and a connection cap; ``/first`` takes its token as the first
message. ``POST /drain`` drains both (window 0). ``GET /stats`` answers the
close counts of both guards as JSON, so the test reads the server's own
counters over HTTP.
"""

from __future__ import annotations

import json
from typing import Any

from tests.support.apps import subject_echo
from tests.support.jwt_keys import SECRET
from ws_guard import Guard, WSGuardMiddleware, load, rules
from ws_guard.types import Receive, Scope, Send

query_guard = Guard(
    rules=[
        rules.MessageRate("3/second"),
        rules.JWTAuth(SECRET, algorithms=["HS256"], token=rules.from_query("token")),
    ],
    load=[load.ConnectionCount(limit=2, retry_min=1.0, retry_max=2.0)],
    paths=["/ws"],
)
first_guard = Guard(
    rules=[
        rules.JWTAuth(SECRET, algorithms=["HS256"], token=rules.from_first_message(timeout=2.0))
    ],
    paths=["/first"],
)


async def _http(scope: Scope, receive: Receive, send: Send) -> None:
    status, body = 404, b""
    if scope["path"] == "/drain":
        await query_guard.drain(0.0, grace=1.0)
        await first_guard.drain(0.0, grace=1.0)
        status, body = 200, b"drained"
    elif scope["path"] == "/stats":
        stats: dict[str, Any] = {
            name: {str(code): count for code, count in g.metrics.snapshot().closes_by_code.items()}
            for name, g in (("ws", query_guard), ("first", first_guard))
        }
        status, body = 200, json.dumps(stats).encode()
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": body})


echo = subject_echo(_http)
app = WSGuardMiddleware(WSGuardMiddleware(echo, guard=first_guard), guard=query_guard)

#: A guard whose storage needs asyncio: refused on trio at lifespan startup.
redis_app = WSGuardMiddleware(echo, guard=Guard(storage="redis://127.0.0.1:1/0"))
