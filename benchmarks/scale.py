"""Idle WebSockets at scale: memory, timers, idle CPU and a drain, bare and guarded.

One uvicorn worker (uvloop, httptools, the default WebSocket implementation)
serves a Starlette app that accepts and waits; client processes open
idle connections to it in steps (``--levels``), each from its own loopback
source address (127.0.0.2, 127.0.0.3, ...) so no address runs out of ports.
At each level the server reports, after a garbage collection, its resident
memory, the guard's pending deadlines and whether a loop timer is armed, and
the CPU it used over ``--idle`` seconds with nothing sent. The same levels
run against the bare app, so the guard's bytes per connection are
``(guarded RSS - bare RSS) / connections``. Last, the guard drains: every
connection is closed with 1012 over ``--window`` seconds, and the clients
report when the last close arrived and the codes they got.

    python benchmarks/scale.py                                  # 2,000 .. 19,000
    python benchmarks/scale.py --levels 1000,5000 --guard rules

Each process's open-file limit is raised to its hard limit; a server holds one
descriptor per connection, so the hard limit (``ulimit -Hn``) bounds a level.
uvicorn's WebSocket pings are off on both servers (``ws_ping_interval=None``):
they would cost the same on both, and the idle CPU is the guard's own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import platform
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from _children import exit_on_sigterm, spawn
from _variants import SRC, VARIANTS, variant

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
BARE = "bare"
#: Connections one client process holds at most (its descriptors are bounded too).
PER_CLIENT = 8_000
#: Handshakes a client process has in flight at once.
OPENING = 200
#: Descriptors a server needs beside its connections (listener, loop, stdio, imports).
FD_SPARE = 200


def raise_fd_limit() -> int:
    """Raise this process's open-file limit to its hard limit; the new limit."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# ---------------------------------------------------------------------------
# Server (subprocess)
# ---------------------------------------------------------------------------
async def idle(websocket: Any) -> None:
    """The endpoint: accept, then echo whatever comes (nothing does, in these runs)."""
    from starlette.websockets import WebSocketDisconnect

    await websocket.accept()
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            await websocket.send_text(await websocket.receive_text())


def build_app(name: str) -> tuple[Any, Any]:
    import psutil
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route, WebSocketRoute

    from ws_guard import WSGuardMiddleware

    guard = None if name == BARE else variant(name).build()
    me = psutil.Process()

    async def cpu(request: Request) -> JSONResponse:
        times = me.cpu_times()
        return JSONResponse({"cpu": times.user + times.system})

    async def stats(request: Request) -> JSONResponse:
        gc.collect()
        body: dict[str, Any] = {"rss": me.memory_info().rss, "fds": me.num_fds()}
        if guard is not None:
            body.update(
                active=guard.metrics.snapshot().active_connections,
                deadlines=len(guard.scheduler),
                timer_armed=guard.scheduler.timer_armed,
            )
        return JSONResponse(body)

    async def drain(request: Request) -> JSONResponse:
        if guard is None:
            return JSONResponse({"drained": False})
        started = time.time()
        await guard.drain(float(request.query_params.get("window", "10")))
        return JSONResponse({"drained": True, "started": started, "ended": time.time()})

    middleware = [] if guard is None else [Middleware(WSGuardMiddleware, guard=guard)]
    routes = [
        WebSocketRoute("/ws", idle),
        Route("/stats", stats),
        Route("/cpu", cpu),
        Route("/drain", drain, methods=["POST"]),
    ]
    return Starlette(routes=routes, middleware=middleware), guard


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    raise_fd_limit()
    app, _ = build_app(args.serve)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        ws="auto",
        ws_ping_interval=None,
        lifespan="on",
        log_level="warning",
        access_log=False,
        backlog=4096,
        timeout_graceful_shutdown=1,
    )
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(config).run()


# ---------------------------------------------------------------------------
# Clients (subprocess): hold N idle connections, report how each ended
# ---------------------------------------------------------------------------
def run_clients(args: argparse.Namespace) -> None:
    import uvloop

    raise_fd_limit()
    uvloop.run(_clients(args))


async def _clients(args: argparse.Namespace) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    query = variant(args.guard).client_query if args.guard in VARIANTS else None
    if args.users:  # connection i is user (first + i) % users, with a token of its own
        from _variants import token_for

        tokens: dict[int, str] = {}

        def query(i: int) -> str:
            user = i % args.users
            if user not in tokens:
                tokens[user] = token_for(f"user{user}")
            return f"token={tokens[user]}"

    held_by_user: dict[str, int] = {}
    gate = asyncio.Semaphore(OPENING)
    opened = asyncio.Event()
    counts = {"open": 0, "failed": 0}
    closes: dict[str, int] = {}
    last_close = [0.0]

    def settled() -> None:
        if counts["open"] + counts["failed"] >= args.clients:
            opened.set()

    async def hold(i: int) -> None:
        url = args.clients_url + (f"?{query(args.first + i)}" if query else "")
        try:
            async with gate:
                ws = await connect(
                    url,
                    proxy=None,
                    ping_interval=None,
                    open_timeout=60,
                    close_timeout=5,
                    local_addr=(args.source, 0),
                )
        except (OSError, asyncio.TimeoutError, ConnectionClosed) as exc:
            counts["failed"] += 1
            key = f"failed: {type(exc).__name__}"
            closes[key] = closes.get(key, 0) + 1
            settled()
            return
        counts["open"] += 1
        user = f"user{(args.first + i) % args.users}" if args.users else ""
        held_by_user[user] = held_by_user.get(user, 0) + 1
        settled()
        try:
            await ws.wait_closed()
        finally:
            held_by_user[user] -= 1
            received = ws.protocol.close_rcvd
            key = str(received.code) if received is not None else "no close frame"
            closes[key] = closes.get(key, 0) + 1
            last_close[0] = time.time()

    tasks = [asyncio.create_task(hold(i)) for i in range(args.clients)]
    await opened.wait()
    print(json.dumps({"ready": counts["open"], "failed": counts["failed"]}), flush=True)
    if args.settle is not None:  # what is still open once refusals have closed
        await asyncio.sleep(args.settle)
        still = {user: n for user, n in held_by_user.items() if n}
        print(json.dumps({"held_by_user": still, "closes": closes}), flush=True)
    # Until every connection has ended (the drain); the parent kills the rest.
    await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps({"closes": closes, "last_close": last_close[0]}), flush=True)


# ---------------------------------------------------------------------------
# Orchestration
# ---------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def env() -> dict[str, str]:
    return dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))
    )


def listening(proc: subprocess.Popen[str], port: int) -> None:
    """Return once *proc* listens on *port*; exit with its stderr if it dies first."""
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"server exited early:\n{proc.stderr.read()}")  # type: ignore[union-attr]
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise SystemExit("server did not listen") from None
            time.sleep(0.05)


def start_server(name: str) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    cmd = [sys.executable, str(HERE), "--serve", name, "--port", str(port)]
    proc = spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    listening(proc, port)
    return proc, port


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def get(port: int, path: str, method: str = "GET") -> dict[str, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    with urllib.request.urlopen(request, timeout=120) as response:
        return dict(json.loads(response.read()))


class Clients:
    """The client processes of one server: each holds up to PER_CLIENT connections."""

    def __init__(self, port: int, guard: str) -> None:
        self.port = port
        self.guard = guard
        self.procs: list[subprocess.Popen[str]] = []
        self.held = 0

    def grow(self, to: int) -> int:
        """Open connections until *to* are held; how many failed."""
        failed = 0
        while self.held < to:
            n = min(PER_CLIENT, to - self.held)
            source = f"127.0.0.{2 + len(self.procs)}"
            cmd = [
                sys.executable, str(HERE), "--clients", str(n), "--first", str(self.held),
                "--clients-url", f"ws://127.0.0.1:{self.port}/ws", "--source", source,
                "--guard", self.guard,
            ]  # fmt: skip
            proc = spawn(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env(),
            )
            self.procs.append(proc)
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                raise SystemExit(f"client exited: {proc.stderr.read()}")  # type: ignore[union-attr]
            ready = json.loads(line)
            failed += ready["failed"]
            self.held += ready["ready"]
            if ready["failed"]:
                break  # the server (or the machine) refuses more: stop growing
        return failed

    def ends(self, timeout: float) -> list[dict[str, Any]]:
        """Each client's report once its connections ended (or *timeout* passed)."""
        reports = []
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            left = max(0.1, deadline - time.monotonic())
            try:
                out, _ = proc.communicate(timeout=left)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
            lines = [line for line in out.splitlines() if line.startswith("{")]
            if lines:
                reports.append(json.loads(lines[-1]))
        return reports

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


def measure(name: str, args: argparse.Namespace) -> dict[str, Any]:
    proc, port = start_server(name)
    clients = Clients(port, name)
    rows: list[dict[str, Any]] = []
    try:
        rows.append({"connections": 0, **get(port, "/stats")})
        for level in (int(n) for n in args.levels.split(",")):
            failed = clients.grow(level)
            time.sleep(1.0)  # handshakes settle
            before = get(port, "/cpu")["cpu"]
            time.sleep(args.idle)
            idle_cpu = get(port, "/cpu")["cpu"] - before
            row = {
                "connections": clients.held,
                "failed": failed,
                **get(port, "/stats"),
                "idle_cpu_ms": idle_cpu * 1000,
            }
            rows.append(row)
            print(json.dumps({"app": name, **row}), flush=True)
            if failed:
                break
        drain: dict[str, Any] = {}
        if name != BARE:
            started = time.time()
            drained = get(port, f"/drain?window={args.window}", "POST")
            reports = clients.ends(timeout=args.window + 30)
            closes: dict[str, int] = {}
            for report in reports:
                for code, n in report["closes"].items():
                    closes[code] = closes.get(code, 0) + n
            drain = {
                "window": args.window,
                "last_close_s": max(r["last_close"] for r in reports) - started,
                "drain_returned_s": drained["ended"] - started,
                "closes": closes,
                "after": get(port, "/stats"),
            }
            print(json.dumps({"app": name, "drain": drain}), flush=True)
        return {"rows": rows, "drain": drain}
    finally:
        clients.stop()
        stop(proc)


def report(data: dict[str, Any]) -> str:
    bare = {r["connections"]: r for r in data["bare"]["rows"]}
    guarded = data["guarded"]["rows"]
    base_b, base_g = data["bare"]["rows"][0]["rss"], guarded[0]["rss"]
    lines = [
        f"Command: `{data['command']}`",
        "",
        "| connections | bare RSS MiB | guarded RSS MiB | guard bytes/connection | "
        "deadlines pending | loop timer armed | idle CPU ms, bare / guarded "
        f"({data['settings']['idle']:g} s) |",
        "|---:|---:|---:|---:|---:|---|---|",
    ]
    for row in guarded[1:]:
        n = row["connections"]
        b = bare.get(n)
        if b is None:
            continue
        extra = ((row["rss"] - base_g) - (b["rss"] - base_b)) / n
        lines.append(
            f"| {n:,} | {b['rss'] / 2**20:.0f} | {row['rss'] / 2**20:.0f} | {extra:,.0f} | "
            f"{row['deadlines']:,} | {row['timer_armed']} | "
            f"{b['idle_cpu_ms']:.1f} / {row['idle_cpu_ms']:.1f} |"
        )
    drain = data["guarded"]["drain"]
    if drain:
        lines += [
            "",
            f"Drain of {guarded[-1]['connections']:,} connections over a {drain['window']:g} s "
            f"window: last close after {drain['last_close_s']:.2f} s, `drain()` returned after "
            f"{drain['drain_returned_s']:.2f} s; close codes {drain['closes']}; afterwards "
            f"{drain['after'].get('deadlines')} deadlines pending, timer armed "
            f"{drain['after'].get('timer_armed')}.",
        ]
    return "\n".join(lines)


def plot(data: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for key, label in (("bare", "bare app"), ("guarded", f"guarded ({data['settings']['guard']})")):
        rows = data[key]["rows"]
        ax.plot(
            [r["connections"] for r in rows],
            [r["rss"] / 2**20 for r in rows],
            marker="o",
            label=label,
        )
    ax.set_xlabel("idle WebSocket connections (one uvicorn worker)")
    ax.set_ylabel("server resident memory (MiB)")
    ax.set_title("Memory against connection count")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="2000,5000,10000,15000,19000")
    parser.add_argument("--guard", default="lifetime", choices=sorted([*VARIANTS, BARE]))
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of idle CPU measured")
    parser.add_argument("--window", type=float, default=10.0, help="drain window (s)")
    parser.add_argument("--json", default=str(ROOT / "docs" / "scale.json"))
    parser.add_argument("--plot", default=str(ROOT / "docs" / "img" / "scale_memory.png"))
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--clients", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--clients-url", help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--source", default="127.0.0.2", help=argparse.SUPPRESS)
    parser.add_argument("--users", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--settle", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve or args.clients:
        return args
    try:
        levels = [int(n) for n in args.levels.split(",")]
    except ValueError:
        parser.error(f"--levels must be connection counts separated by commas, not {args.levels!r}")
    if not levels or levels != sorted(set(levels)) or levels[0] < 1:
        parser.error(f"--levels must be positive and increasing, not {args.levels!r}")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if levels[-1] + FD_SPARE > hard:
        parser.error(
            f"--levels up to {levels[-1]} needs {levels[-1] + FD_SPARE} open files in the "
            f"server, and this machine allows {hard} per process (ulimit -Hn)"
        )
    if args.idle <= 0 or args.window < 0:
        parser.error("--idle must be positive and --window at least 0")
    return args


def main() -> None:
    args = parse_args()
    if args.serve:
        serve(args)
        return
    if args.clients:
        run_clients(args)
        return
    exit_on_sigterm()
    limit = raise_fd_limit()
    data: dict[str, Any] = {
        "command": " ".join(["python", "benchmarks/scale.py", *sys.argv[1:]]),
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "open_file_limit": limit,
        },
        "settings": {"guard": args.guard, "levels": args.levels, "idle": args.idle},
    }
    data["bare"] = measure(BARE, args)
    data["guarded"] = measure(args.guard, args)
    Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
    Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
    plot(data, args.plot)
    print(report(data))
    print(f"wrote {args.json} and {args.plot}")


if __name__ == "__main__":
    main()
