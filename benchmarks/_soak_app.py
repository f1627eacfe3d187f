"""The soak benchmark's server: a guarded Starlette echo app, and what it reports.

Runs in its own uvicorn process (started by ``soak.py --serve``). Besides the
echo endpoint at ``/ws`` it serves:

- ``/status.json``: ``ws_guard.status_app(guard)``, the guard's own snapshot;
- ``/debug.json``: sizes of the guard's internal structures (connections,
  deadlines, per-key states, Redis connection pool, asyncio tasks, allocated
  blocks; with ``?full=1`` also live objects by type), read through private
  attributes: this is a benchmark that hunts leaks, not an API;
- ``/peer?addr=IP:PORT``: what the server side did for one recent connection
  (see :class:`Tracker`), so the client can attribute a 1006 it saw.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import json
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

# Benchmark this checkout's ws_guard, not whatever copy is installed.
SRC = str(Path(__file__).resolve().parent.parent / "src")
if SRC not in sys.path:
    sys.path.insert(0, SRC)

from ws_guard import Guard, WSGuardMiddleware, load, rules, status_app  # noqa: E402

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: HS256 secret of the soak's tokens (benchmark only).
SECRET = "ws_guard-soak-secret-0123456789abcdef0123456789"
MAX_MESSAGE_BYTES = 4096
FORBIDDEN = "forbidden-word"
#: Per connection: a client that sends more is closed with 1008 rate_limited.
CONNECTION_RATE = "20/second"
CONNECTION_RATE_LIMIT = 20
#: Per user across connections and processes (Redis leases).
USER_RATE = "30/second"
USER_RATE_LIMIT = 30
#: Concurrent connections per user (Redis sorted set of slots).
USER_CAP = 3
#: Handshake attempts per source address (Redis capped list).
CONNECT_RATE = "30 per 2 seconds"
CONNECT_RATE_LIMIT = 30
CONNECT_RATE_WINDOW = 2.0
#: Seconds a Redis connection slot lives without a heartbeat (3 x heartbeat).
CAP_HEARTBEAT = 5.0
#: Connections the Tracker remembers, oldest forgotten first (bounded memory).
TRACKED_PEERS = 2048


class SoakCrash(Exception):
    """Raised by the echo app when a client asks it to crash (expect 1011)."""


def build_guard(redis_url: str, conn_limit: int, lag_limit: float) -> Guard:
    return Guard(
        rules=[
            rules.ConnectRate(CONNECT_RATE, key=rules.by_ip),
            rules.JWTAuth(SECRET, algorithms=["HS256"], token=rules.from_query("token")),
            rules.MaxConnectionsPerKey(USER_CAP, key=rules.by_user, heartbeat=CAP_HEARTBEAT),
            rules.MaxMessageSize(MAX_MESSAGE_BYTES),
            rules.MessageTypes(text=True, binary=False),
            rules.Content(lambda text: FORBIDDEN not in text, name="no_forbidden"),
            rules.MessageRate(CONNECTION_RATE),
            rules.MessageRate(USER_RATE, key=rules.by_user, name="user_rate"),
        ],
        load=[load.ConnectionCount(limit=conn_limit), load.EventLoopLag(limit=lag_limit)],
        storage=redis_url,
        paths=["/ws"],
    )


def describe_guard(conn_limit: int, lag_limit: float) -> str:
    return (
        f"ConnectRate({CONNECT_RATE!r}, by_ip) + JWTAuth(HS256, ?token=) + "
        f"MaxConnectionsPerKey({USER_CAP}, by_user, heartbeat={CAP_HEARTBEAT:g}) + "
        f"MaxMessageSize({MAX_MESSAGE_BYTES}) + MessageTypes(text only) + "
        f"Content(no {FORBIDDEN!r}) + MessageRate({CONNECTION_RATE!r}) + "
        f"MessageRate({USER_RATE!r}, by_user) on Redis; "
        f"load: ConnectionCount({conn_limit}) + EventLoopLag({lag_limit:g})"
    )


# ---------------------------------------------------------------------------
# What the server stack did, per connection and in total
# ---------------------------------------------------------------------------
class Tracker:
    """Outermost ASGI layer: records what the guarded app sent to the server.

    Per connection (by client ``ip:port``, the last ``TRACKED_PEERS`` only):
    accepted, the close frame sent, the disconnect received, an escaped
    exception. In total: counters that would expose an ASGI state-machine
    violation by the stack (two closes, a send after close).
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.peers: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self.stats: collections.Counter[str] = collections.Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        client = scope.get("client") or ("?", 0)
        record: dict[str, Any] = {"accepted": False, "close": None, "disconnect": None}
        peers = self.peers
        peers[f"{client[0]}:{client[1]}"] = record
        if len(peers) > TRACKED_PEERS:
            peers.popitem(last=False)
        stats = self.stats
        stats["connections"] += 1

        async def tracked_send(message: Message) -> None:
            kind = message["type"]
            if record["close"] is not None:
                stats["send_after_close"] += 1
                record["send_after_close"] = kind
            if kind == "websocket.accept":
                record["accepted"] = True
            elif kind == "websocket.close":
                record["close"] = [message.get("code", 1000), message.get("reason") or ""]
                stats[f"close_sent:{record['close'][0]}"] += 1
            elif kind == "websocket.http.response.start":
                record["http"] = message.get("status")
            try:
                await send(message)
            except OSError as exc:
                record["send_error"] = f"{type(exc).__name__} on {kind}"
                stats[f"send_error:{type(exc).__name__}"] += 1
                raise

        async def tracked_receive() -> Message:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                record["disconnect"] = message.get("code")
            return message

        try:
            await self.app(scope, tracked_receive, tracked_send)
        except BaseException as exc:
            record["exception"] = type(exc).__name__
            stats[f"exception:{type(exc).__name__}"] += 1
            raise
        finally:
            record["ended"] = True


def internals(guard: Guard, tracker: Tracker, full: bool) -> dict[str, Any]:
    """Sizes of everything that could grow with the number of connections served."""
    scheduler = guard.scheduler
    data: dict[str, Any] = {
        "guard_connections": len(guard.live_connections),
        "deadlines": len(scheduler),
        "deadline_heap": len(getattr(scheduler, "_heap", ())),
        "asyncio_tasks": len(asyncio.all_tasks()),
        "allocated_blocks": sys.getallocatedblocks(),
        "tracked_peers": len(tracker.peers),
        "storage_jobs": len(getattr(guard.storage, "_jobs", ())),
    }
    for rule in guard.rules:
        maps = getattr(rule, "_maps", None)
        if maps:
            data[f"key_states:{rule.name or 'message_rate'}"] = sum(len(m) for m in maps)
        book = getattr(rule, "_book", None)
        if book is not None:
            data[f"lease_tasks:{rule.name or 'message_rate'}"] = len(book.tasks)
        held = getattr(rule, "_held", None)
        if isinstance(held, dict):
            data["cap_keys_held"] = len(held)
            data["cap_slots_held"] = sum(len(ids) for ids in held.values())
            data["cap_late_releases"] = len(getattr(rule, "_late", ()))
    if guard.storage.is_open:
        pool = getattr(guard.storage.redis(), "connection_pool", None)
        if pool is not None:
            data["redis_pool_connections"] = len(getattr(pool, "_available_connections", ())) + len(
                getattr(pool, "_in_use_connections", ())
            )
    if full:
        objects = gc.get_objects()
        data["gc_objects"] = len(objects)
        types = collections.Counter(type(o).__qualname__ for o in objects)
        data["types"] = {name: n for name, n in types.most_common() if n >= 20}
        del objects
    return data


# ---------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------
def build_app(guard: Guard) -> tuple[Any, Tracker]:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket

    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text == "bye":
                await websocket.close(1000, "bye")
                return
            if text == "crash":
                raise SoakCrash("the client asked for a crash")
            if text is not None:
                await websocket.send_text(text)
            else:
                await websocket.send_bytes(message.get("bytes") or b"")

    holder: dict[str, Tracker] = {}

    async def debug(request: Request) -> Response:
        full = request.query_params.get("full") == "1"
        if full:
            gc.collect()
        return JSONResponse(internals(guard, holder["tracker"], full))

    async def peer(request: Request) -> Response:
        tracker = holder["tracker"]
        record = tracker.peers.get(request.query_params.get("addr", ""))
        return JSONResponse({"record": record, "stats": dict(tracker.stats)})

    app = Starlette(
        routes=[
            WebSocketRoute("/ws", echo),
            Route("/status.json", status_app(guard)),
            Route("/debug.json", debug),
            Route("/peer", peer),
        ],
        middleware=[Middleware(Tracker), Middleware(WSGuardMiddleware, guard=guard)],
    )
    # Starlette builds its middleware stack lazily: find the Tracker after the first build.
    app.middleware_stack = app.build_middleware_stack()
    layer: Any = app.middleware_stack
    while not isinstance(layer, Tracker):
        layer = layer.app
    holder["tracker"] = layer
    return app, layer


def serve(port: int, redis_url: str, conn_limit: int, lag_limit: float, ws: str) -> None:
    import contextlib

    import uvicorn

    guard = build_guard(redis_url, conn_limit, lag_limit)
    app, tracker = build_app(guard)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        ws=ws,
        lifespan="on",
        log_level="warning",
        access_log=False,
        backlog=4096,
    )
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the SIGINT after shutdown
        uvicorn.Server(config).run()
    summary = {
        "ws_protocol": getattr(config.ws_protocol_class, "__name__", None),
        "snapshot": guard.metrics.snapshot().as_dict(),
        "tracker": dict(tracker.stats),
    }
    print(json.dumps(summary), flush=True)
