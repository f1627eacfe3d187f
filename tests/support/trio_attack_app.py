"""A guarded app for the hostile trio tests, served by ``hypercorn -k trio``.

Background work on every kind ws_guard runs (the lag probe, an async
gauge's sampler, deadlines of a first-message token, ``drain_signals``),
and an app handler on ``/stuck`` that never returns after its connection
closed, ended by ``app_exit_timeout``. ``GET /stats`` answers the close
counts and the open-connection count as JSON.
"""

from __future__ import annotations

import json
from typing import Any

import anyio

from tests.support.apps import subject_echo
from tests.support.jwt_keys import SECRET
from ws_guard import Guard, WSGuardMiddleware, load, rules
from ws_guard.types import Receive, Scope, Send


async def _queue_depth() -> float:
    await anyio.sleep(0)
    return 0.0


guard = Guard(
    rules=[
        rules.JWTAuth(SECRET, algorithms=["HS256"], token=rules.from_first_message(timeout=30.0))
    ],
    load=[
        load.EventLoopLag(limit=5.0),
        load.Gauge(_queue_depth, limit=10.0, name="queue", interval=0.05),
    ],
    drain_window=0.0,
    drain_signals=["SIGTERM"],
    app_exit_timeout=0.5,
)


async def _http(scope: Scope, receive: Receive, send: Send) -> None:
    snap = guard.metrics.snapshot()
    stats: dict[str, Any] = {
        "closes": {str(code): count for code, count in snap.closes_by_code.items()},
        "active": snap.active_connections,
    }
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": json.dumps(stats).encode()})


echo = subject_echo(_http, stuck_path="/stuck")
app = WSGuardMiddleware(echo, guard=guard)
