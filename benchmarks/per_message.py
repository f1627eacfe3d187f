"""The guard's in-process cost per message, in microseconds.

Drives a trivial raw-ASGI echo app, bare and behind ``WSGuardMiddleware``,
with an in-process fake server: ``receive`` hands out prebuilt messages and
``send`` drops replies, with no network and no queue. By default each
``receive`` first yields to the event loop once (uvloop when installed), as a
real server's does while it waits for the next frame: a suspension travels
through every coroutine frame between the task and the server, so a wrapper
costs more per message there than in a straight call. ``--no-yield`` measures
the straight-call cost alone. The difference between the bare and guarded
runs divided by N is what the guard adds to each message; the handshake
cost is timed separately with zero messages.

    python benchmarks/per_message.py                 # defaults: 20000 msgs x 15 repeats
    python benchmarks/per_message.py --profile       # cProfile of the guarded run
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from _variants import VARIANTS, variant

from ws_guard import WSGuardMiddleware
from ws_guard.types import Receive, Scope, Send

Message = dict[str, Any]
App = Callable[..., Any]
T = TypeVar("T")

SCOPE_TEMPLATE: dict[str, Any] = {
    "type": "websocket",
    "asgi": {"version": "3.0", "spec_version": "2.4"},
    "scheme": "ws",
    "server": ("127.0.0.1", 8000),
    "client": ("127.0.0.1", 50000),
    "root_path": "",
    "path": "/ws",
    "raw_path": b"/ws",
    "query_string": b"",
    "headers": [(b"host", b"127.0.0.1:8000")],
    "subprotocols": [],
    "extensions": {},
    "state": {},
}


async def echo(scope: Scope, receive: Receive, send: Send) -> None:
    """The smallest honest echo: accept, send back each text/bytes message."""
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] != "websocket.receive":
            return
        text = message.get("text")
        if text is not None:
            await send({"type": "websocket.send", "text": text})
        else:
            await send({"type": "websocket.send", "bytes": message.get("bytes")})


class FakeServer:
    """One connection's worth of ASGI messages, served in-process."""

    def __init__(self, messages: int, size: int, *, yield_each: bool = True) -> None:
        payload = "x" * size
        self.script: list[Message] = [{"type": "websocket.connect"}]
        self.script += [{"type": "websocket.receive", "text": payload}] * messages
        self.script.append({"type": "websocket.disconnect", "code": 1000})
        self.yield_each = yield_each
        self.sent = 0

    async def run(self, app: App, query: str = "") -> int:
        """Run one connection through *app* (URL query *query*); returns elapsed nanoseconds."""
        next_message = iter(self.script).__next__
        self.sent = 0
        pause = asyncio.sleep

        async def receive() -> Message:
            return next_message()

        async def receive_after_yield() -> Message:
            await pause(0)  # one trip through the event loop, like a real wait
            return next_message()

        async def send(message: Message) -> None:
            self.sent += 1

        scope = dict(SCOPE_TEMPLATE, query_string=query.encode())
        start = time.perf_counter_ns()
        await app(scope, receive_after_yield if self.yield_each else receive, send)
        return time.perf_counter_ns() - start


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop when it is installed (as uvicorn[standard] does), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    apps: dict[str, App] = {"bare": echo}
    guards = {}
    queries: dict[str, str] = {"bare": ""}  # what the variant's first client adds to its URL
    for name in args.guard:
        guards[name] = variant(name).build()
        apps[name] = WSGuardMiddleware(echo, guard=guards[name])
        client_query = variant(name).client_query
        queries[name] = client_query(0) if client_query else ""
    full = FakeServer(args.messages, args.size, yield_each=args.yield_each)
    empty = FakeServer(0, args.size, yield_each=args.yield_each)
    per_message: dict[str, list[float]] = {name: [] for name in apps}
    per_connection: dict[str, list[float]] = {name: [] for name in apps}
    for name, app in apps.items():  # warm up: imports, first-call caches, guard startup
        await full.run(app, queries[name])
    gc.collect()
    gc.disable()
    try:
        for _ in range(args.repeats):
            for name, app in apps.items():  # interleaved, so drift hits all alike
                elapsed = await full.run(app, queries[name])
                if full.sent != args.messages + 1:  # every message echoed, plus the accept
                    raise SystemExit(f"{name}: {full.sent - 1} of {args.messages} echoed")
                per_message[name].append(elapsed / args.messages / 1000)
                handshakes = [await empty.run(app, queries[name]) for _ in range(args.handshakes)]
                per_connection[name].append(min(handshakes) / 1000)
    finally:
        gc.enable()
    for name, guard in guards.items():
        snap = guard.metrics.snapshot()
        if snap.handshakes_rejected or set(snap.closes_by_initiator) != {"client"}:
            raise SystemExit(f"{name}: the guard closed or rejected a connection: {snap}")
    return {"per_message": per_message, "per_connection": per_connection}


def report(args: argparse.Namespace, results: dict[str, Any]) -> str:
    per_message = results["per_message"]
    per_connection = results["per_connection"]
    bare_min = min(per_message["bare"])
    bare_med = statistics.median(per_message["bare"])
    lines = [
        f"Command: `{shlex.join(['python', 'benchmarks/per_message.py', *sys.argv[1:]])}`",
        f"{args.messages} text messages of {args.size} B per connection, "
        f"{args.repeats} repeats, interleaved, "
        f"{'one event-loop yield per receive' if args.yield_each else 'no yields'} "
        f"({loop_name()}); µs per message (min / median of repeats).",
        "",
        "| app | µs/message min | µs/message median | guard adds (min) | guard adds (median) "
        "| µs/connection (handshake+close) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, samples in per_message.items():
        low, mid = min(samples), statistics.median(samples)
        added = "" if name == "bare" else f"{low - bare_min:.3f}"
        added_med = "" if name == "bare" else f"{mid - bare_med:.3f}"
        conn = statistics.median(per_connection[name])
        lines.append(f"| {name} | {low:.3f} | {mid:.3f} | {added} | {added_med} | {conn:.1f} |")
    return "\n".join(lines)


def loop_name() -> str:
    try:
        import uvloop
    except ImportError:
        return "asyncio loop"
    return f"uvloop {getattr(uvloop, '__version__', '?')}"


def profile(args: argparse.Namespace) -> None:
    name = args.guard[0]
    app = WSGuardMiddleware(echo, guard=variant(name).build())
    client_query = variant(name).client_query
    query = client_query(0) if client_query else ""
    server = FakeServer(args.messages, args.size, yield_each=args.yield_each)
    run_loop(server.run(app, query))  # warm up
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(args.repeats):
        run_loop(server.run(app, query))
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000, help="messages per connection")
    parser.add_argument("--repeats", type=int, default=15, help="timed connections per app")
    parser.add_argument("--size", type=int, default=64, help="text message size in bytes")
    parser.add_argument(
        "--handshakes", type=int, default=20, help="empty connections timed per repeat"
    )
    parser.add_argument(
        "--guard",
        action="append",
        choices=sorted(VARIANTS),
        help="guard variant(s) to compare with the bare app (default: rules)",
    )
    parser.add_argument(
        "--no-yield",
        dest="yield_each",
        action="store_false",
        help="receive never suspends: the straight-call cost only",
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the first variant")
    args = parser.parse_args(argv)
    args.guard = args.guard or ["rules"]
    for flag in ("messages", "repeats", "size", "handshakes"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.profile:
        profile(args)
        return
    print(report(args, run_loop(measure(args))))


if __name__ == "__main__":
    main()
