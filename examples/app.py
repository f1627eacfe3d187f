"""A small chat room guarded by ws_guard.

    python -m pip install -e ".[examples]"
    python examples/app.py                # then open http://127.0.0.1:8000/
    python examples/app.py --port 9000    # or pick the address with --host/--port

Everyone connected to ``/ws`` shares one in-memory room: each text message is
sent to every member, the sender included, so a lone client gets an echo.
ws_guard sits in front of ``/ws`` and closes a connection that breaks a rule;
the page at ``/`` has a button for each and shows the code and reason:

    1009 message_too_big     a message longer than MAX_MESSAGE_BYTES
    1003 unsupported_data    a binary frame (the room is text only)
    1008 content:no_links    a message containing "http://"
    1008 content:no_spam     a message containing FORBIDDEN_WORD as a word
    1008 rate_limited; retry-after=<seconds>
                             more than MESSAGES_PER_SECOND messages in a second

What the guard counts is on show too: ``/status`` is a live page (active
connections, loop lag, closes by code, refreshed every second), ``/status.json``
its data, and ``/metrics`` the Prometheus exposition.

The WebSocket handler holds no policy code at all. When ws_guard closes a
connection, ``receive_text()`` raises ``WebSocketDisconnect`` carrying the same
code, and the handler cleans up exactly as it does when a client leaves.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import re
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from ws_guard import Guard, WSGuardMiddleware, load, metrics_app, rules, status_app

STATIC_DIR = Path(__file__).parent / "static"
MAX_MESSAGE_BYTES = 1024
MESSAGES_PER_SECOND = 10
FORBIDDEN_WORD = "spam"

guard = Guard(
    rules=[
        # Checked on every client message, in this order; the first breach closes.
        rules.MaxMessageSize(MAX_MESSAGE_BYTES),  # 1009 message_too_big
        rules.MessageTypes(text=True, binary=False),  # 1003 unsupported_data
        rules.Content(lambda text: "http://" not in text, name="no_links"),  # 1008
        # A fixed word has no nested repetition, so Python's re cannot backtrack
        # catastrophically; engine="re" keeps its Unicode \b (see the guide).
        rules.Pattern(
            rf"\b{FORBIDDEN_WORD}\b", name="no_spam", flags=re.IGNORECASE, engine="re"
        ),  # 1008
        # Per connection, plain arithmetic on every message:
        # 1008 rate_limited; retry-after=<seconds>.
        rules.MessageRate(f"{MESSAGES_PER_SECOND}/second"),
        # Per client address, at the handshake: 1008 connect_rate_limited; retry-after=<seconds>.
        rules.ConnectRate("60/minute", key=rules.by_ip),
    ],
    # Checked at each handshake: with 1000 connections open, the next one is
    # accepted and closed at once with 1013 overloaded; retry-after=<seconds>.
    # The event-loop lag gauge also feeds the status page's lag tile.
    load=[load.ConnectionCount(limit=1000), load.EventLoopLag(limit=0.25)],
    paths=["/ws"],
    # Ctrl+C / SIGTERM: close open sockets with 1012 restarting; retry-after=<seconds>,
    # spread over 2 s, before uvicorn closes them all at once (docs/load-shedding.md).
    drain_signals=["SIGINT", "SIGTERM"],
    drain_window=2.0,
)


class Room:
    """Everyone connected to /ws, by name. In memory: one process, no history."""

    def __init__(self) -> None:
        self.members: dict[str, WebSocket] = {}

    async def join(self, name: str, websocket: WebSocket) -> None:
        self.members[name] = websocket
        await self.broadcast({"type": "joined", "who": name, "online": len(self.members)})

    async def leave(self, name: str) -> None:
        if self.members.pop(name, None) is not None:
            await self.broadcast({"type": "left", "who": name, "online": len(self.members)})

    async def broadcast(self, event: dict[str, Any]) -> None:
        for websocket in list(self.members.values()):
            # A client that just went away is skipped; its own handler is leaving the room.
            with contextlib.suppress(WebSocketDisconnect):
                await websocket.send_json(event)


room = Room()
guest_numbers = itertools.count(1)


async def homepage(request: Request) -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html")


async def status_page(request: Request) -> FileResponse:
    return FileResponse(STATIC_DIR / "status.html")


async def chat(websocket: WebSocket) -> None:
    await websocket.accept()
    name = f"guest-{next(guest_numbers)}"
    try:
        # Tell the page the limits, so its buttons can break them on purpose.
        await websocket.send_json(
            {
                "type": "welcome",
                "you": name,
                "max_message_bytes": MAX_MESSAGE_BYTES,
                "forbidden_word": FORBIDDEN_WORD,
            }
        )
        await room.join(name, websocket)
        while True:
            text = await websocket.receive_text()
            await room.broadcast({"type": "chat", "from": name, "text": text})
    except WebSocketDisconnect:
        pass  # the client left, or ws_guard closed the connection (the code says which)
    finally:
        await room.leave(name)


# Pages, endpoints and static files (examples/static/); add new ones here.
routes = [
    Route("/", homepage),
    WebSocketRoute("/ws", chat),
    Route("/status", status_page),
    Route("/status.json", status_app(guard)),  # guard.metrics.snapshot().as_dict() as JSON
    Route("/metrics", metrics_app(guard)),  # Prometheus text, on a registry of its own
    Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
]

app = Starlette(routes=routes, middleware=[Middleware(WSGuardMiddleware, guard=guard)])


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the ws_guard example chat room.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (8000)")
    args = parser.parse_args()
    # Show ws_guard's log: one line per connection it closes, with code and rule.
    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(message)s")
    uvicorn.run(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
