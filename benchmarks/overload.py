"""Overload: offer far more load than one uvicorn worker serves, with and without the guard.

The server (one uvicorn worker, uvloop, its own process pinned to CPU 0)
echoes every message after ``--work-ms`` of CPU-bound work, so it serves at
most ``1000 / work-ms`` messages per second. The client (this process,
pinned to CPU 1, picows) opens N connections spread over ``--ramp`` seconds;
each sends ``--rate`` messages per second in an open loop (it does not wait
for echoes, as real clients do not), so queues build when offered load
exceeds capacity. For each N and each mode it reports:

- p50/p99 round-trip latency of the messages served (sent in the window);
- goodput: echoes received per second in the window;
- how fast refused clients are told 1013 (connect start -> close frame).

Modes: ``none`` (the bare app) and ``guard`` (ConnectionCount + EventLoopLag).

    python benchmarks/overload.py                                  # full run, ~2 min
    python benchmarks/overload.py --levels 20,80 --duration 2 --ramp 0.5   # smoke run

Results go to ``--json`` and a PNG plot to ``--plot`` (matplotlib).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _children import exit_on_sigterm, run_stoppable, spawn

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
SRC = str(ROOT / "src")
if SRC not in sys.path:
    sys.path.insert(0, SRC)


def pin(cpu: int | None) -> None:
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {cpu})


# ---------------------------------------------------------------------------
# Server (subprocess)
# ---------------------------------------------------------------------------
def build_app(args: argparse.Namespace) -> tuple[Any, Any]:
    from ws_guard import Guard, WSGuardMiddleware, load

    work = args.work_ms / 1000.0
    perf = time.perf_counter

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].rpartition(".")[2]
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        if scope["type"] != "websocket":
            return
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            until = perf() + work
            while perf() < until:  # the handler's CPU-bound work (parsing, rendering...)
                pass
            await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})

    if args.serve == "none":
        return app, None
    guard = Guard(
        load=[
            load.ConnectionCount(limit=args.conn_limit),
            load.EventLoopLag(limit=args.lag_limit, hold=args.hold),
        ]
    )
    return WSGuardMiddleware(app, guard=guard), guard


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    pin(args.server_cpu)
    app, guard = build_app(args)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        ws="auto",
        lifespan="on",
        log_level="error",
        access_log=False,
        backlog=4096,
    )
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(config).run()
    summary: dict[str, Any] = {}
    if guard is not None:
        snap = guard.metrics.snapshot()
        summary = {
            "handshakes_admitted": snap.handshakes_admitted,
            "handshakes_rejected": snap.handshakes_rejected,
            "gauges": [{"name": g.name, "sheds": g.sheds, "value": g.value} for g in snap.gauges],
        }
    print(json.dumps(summary), flush=True)


# ---------------------------------------------------------------------------
# Client (this process)
# ---------------------------------------------------------------------------
async def offer(url: str, connections: int, args: argparse.Namespace) -> dict[str, Any]:
    from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

    loop = asyncio.get_running_loop()
    perf_ns = time.perf_counter_ns
    period = 1.0 / args.rate
    t0 = perf_ns()
    window_start = t0 + int(args.ramp * 1e9)
    window_end = window_start + int(args.duration * 1e9)
    latencies: list[int] = []
    shed_after: list[int] = []
    stats = {"admitted": 0, "shed": 0, "failed": 0, "other_closes": 0, "received": 0, "sent": 0}

    class Client(WSListener):
        def __init__(self, started: int) -> None:
            self.started = started  # when the connect attempt began
            self.transport: WSTransport | None = None
            self.first = True
            self.handle: asyncio.TimerHandle | None = None

        def on_ws_connected(self, transport: WSTransport) -> None:
            self.transport = transport

        def send(self) -> None:
            now = perf_ns()
            if self.transport is None or now >= window_end:
                return
            self.transport.send(WSMsgType.BINARY, now.to_bytes(8, "little"))
            if now >= window_start:
                stats["sent"] += 1
            self.handle = loop.call_later(period, self.send)

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            now = perf_ns()
            if frame.msg_type == WSMsgType.BINARY:
                # Echoes that arrive in the window: their latency includes
                # all the queueing the server has built up by then.
                if window_start <= now < window_end:
                    sent = int.from_bytes(frame.get_payload_as_bytes(), "little")
                    latencies.append(now - sent)
                    stats["received"] += 1
            elif frame.msg_type == WSMsgType.CLOSE:
                if self.handle is not None:
                    self.handle.cancel()
                self.transport = None
                if frame.get_close_code() == 1013 and self.first:
                    stats["shed"] += 1
                    shed_after.append(now - self.started)
                elif now < window_end:
                    stats["other_closes"] += 1
                transport.disconnect()
            self.first = False

    async def one(i: int) -> tuple[WSTransport, Client] | None:
        await asyncio.sleep(args.ramp * i / connections)
        started = perf_ns()
        try:
            transport, listener = await ws_connect(
                lambda: Client(started), url, websocket_handshake_timeout=args.ramp + args.duration
            )
        except Exception:  # refused, timed out, reset: the client never got in
            stats["failed"] += 1
            return None
        client = listener
        assert isinstance(client, Client)
        # Give the guard's close a moment to arrive before counting an admission.
        await asyncio.sleep(0.05)
        if client.transport is not None:
            stats["admitted"] += 1
            client.handle = loop.call_later(period * ((i * 7919) % 1000) / 1000, client.send)
        return transport, client

    pairs = [p for p in await asyncio.gather(*(one(i) for i in range(connections))) if p]
    remaining = (window_end - perf_ns()) / 1e9
    if remaining > 0:
        await asyncio.sleep(remaining)
    for transport, client in pairs:
        if client.handle is not None:
            client.handle.cancel()
        if not transport.is_disconnected:
            transport.send_close(WSCloseCode.OK)
            transport.disconnect()
    latencies.sort()
    shed_after.sort()
    slo_ns = 2 * args.lag_limit * 1e9
    timely = sum(1 for latency in latencies if latency <= slo_ns)

    def pct(values: list[int], q: float) -> float | None:
        if not values:
            return None
        return values[min(len(values) - 1, int(q * len(values)))] / 1e6  # ms

    offered = connections * args.rate
    return {
        "connections": connections,
        "offered_msgs_per_s": offered,
        "goodput_msgs_per_s": stats["received"] / args.duration,
        "timely_goodput_msgs_per_s": timely / args.duration,
        "p50_ms": pct(latencies, 0.50),
        "p99_ms": pct(latencies, 0.99),
        "max_ms": pct(latencies, 1.0),
        "shed_p50_ms": pct(shed_after, 0.50),
        "shed_p99_ms": pct(shed_after, 0.99),
        **stats,
    }


# ---------------------------------------------------------------------------
# Orchestrator
# ---------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(mode: str, args: argparse.Namespace) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    cmd = [sys.executable, str(HERE), "--serve", mode, "--port", str(port)]
    for flag in ("work_ms", "conn_limit", "lag_limit", "hold"):
        cmd += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    if args.server_cpu is not None:
        cmd += ["--server-cpu", str(args.server_cpu)]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))
    )
    proc = spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 20
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"server exited early:\n{proc.stderr.read()}")  # type: ignore[union-attr]
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5):
                return proc, f"ws://127.0.0.1:{port}/ws"
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise SystemExit("server did not listen") from None
            time.sleep(0.05)


def stop_server(proc: subprocess.Popen[str]) -> dict[str, Any]:
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    lines = out.strip().splitlines()
    return dict(json.loads(lines[-1])) if lines else {}


def run(args: argparse.Namespace) -> dict[str, Any]:
    import uvloop

    pin(args.client_cpu)
    results: list[dict[str, Any]] = []
    for mode in args.modes.split(","):
        for connections in (int(n) for n in args.levels.split(",")):
            proc, url = start_server(mode, args)
            try:
                row = run_stoppable(offer(url, connections, args), uvloop.run)
            finally:
                server = stop_server(proc)
            row.update(mode=mode, server=server)
            results.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "server"}), flush=True)
    return {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "settings": {
            k: getattr(args, k)
            for k in ("work_ms", "rate", "ramp", "duration", "conn_limit", "lag_limit", "hold")
        },
        "capacity_msgs_per_s": 1000.0 / args.work_ms,
        "results": results,
    }


def plot(data: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    settings = data["settings"]
    capacity = data["capacity_msgs_per_s"]
    fig, (lat, good, shed) = plt.subplots(1, 3, figsize=(15, 4.6))
    styles = {"none": ("tab:red", "no guard"), "guard": ("tab:blue", "guard")}
    for mode, (color, label) in styles.items():
        rows = [r for r in data["results"] if r["mode"] == mode]
        if not rows:
            continue
        x = [r["offered_msgs_per_s"] for r in rows]
        for key, style in (("p50_ms", "--"), ("p99_ms", "-")):
            pts = [(xi, r[key]) for xi, r in zip(x, rows, strict=True) if r[key] is not None]
            if pts:
                lat.plot(*zip(*pts, strict=True), style, marker="o", color=color,
                         label=f"{label} {key[:3]}")  # fmt: skip
        good.plot(x, [r["goodput_msgs_per_s"] for r in rows], "-o", color=color, label=label)
        good.plot(
            x,
            [r["timely_goodput_msgs_per_s"] for r in rows],
            "--o",
            color=color,
            label=f"{label}, within 2 x lag limit",
        )
        if mode == "guard":
            pts = [(xi, r["shed_p99_ms"]) for xi, r in zip(x, rows, strict=True)
                   if r["shed_p99_ms"] is not None]  # fmt: skip
            if pts:
                shed.plot(*zip(*pts, strict=True), "-o", color=color, label="p99 time to 1013")
            pts = [(xi, r["shed_p50_ms"]) for xi, r in zip(x, rows, strict=True)
                   if r["shed_p50_ms"] is not None]  # fmt: skip
            if pts:
                shed.plot(*zip(*pts, strict=True), "--o", color=color, label="p50 time to 1013")
    lat.axhline(2000 * settings["lag_limit"], color="gray", lw=1, ls=":",
                label="2 x lag limit")  # fmt: skip
    lat.set_yscale("log")
    lat.set_xlabel("offered load (messages/s)")
    lat.set_ylabel("round-trip latency of served messages (ms)")
    lat.set_title("Latency")
    good.axvline(capacity, color="gray", lw=1, ls=":", label=f"capacity {capacity:.0f}/s")
    good.set_xlabel("offered load (messages/s)")
    good.set_ylabel("echoes received per second")
    good.set_title("Goodput")
    shed.axhline(1000, color="gray", lw=1, ls=":", label="one lag window (1 s)")
    shed.set_yscale("log")
    shed.set_xlabel("offered load (messages/s)")
    shed.set_ylabel("connect start -> 1013 close (ms)")
    shed.set_title("How fast excess clients hear 1013")
    offered = sorted({r["offered_msgs_per_s"] for r in data["results"]})
    for ax in (lat, good, shed):
        ax.set_xscale("log")
        ax.set_xticks(offered, [f"{x:g}" for x in offered])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"One uvicorn worker, {settings['work_ms']} ms CPU per message, "
        f"{settings['rate']} msg/s per connection; guard = "
        f"ConnectionCount({settings['conn_limit']}) + EventLoopLag({settings['lag_limit']})"
        + (f"\n{data['note']}" if data.get("note") else ""),
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="10,20,40,80,160,320", help="connections per level")
    parser.add_argument("--modes", default="none,guard")
    parser.add_argument("--work-ms", type=float, default=2.0, help="CPU per message on the server")
    parser.add_argument("--rate", type=float, default=10.0, help="messages/s per connection")
    parser.add_argument("--ramp", type=float, default=1.0, help="seconds to open all connections")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds after ramp")
    parser.add_argument("--conn-limit", type=int, default=36, help="ConnectionCount limit")
    parser.add_argument("--lag-limit", type=float, default=0.1, help="EventLoopLag limit (s)")
    parser.add_argument("--hold", type=float, default=3.0, help="EventLoopLag hold (s)")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--json", default=str(ROOT / "docs" / "overload.json"))
    parser.add_argument("--plot", default=str(ROOT / "docs" / "img" / "overload.png"))
    parser.add_argument("--note", default="", help="a line added to the plot's title")
    parser.add_argument("--replot", metavar="JSON", help="only redraw the plot from a results file")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.serve:
        serve(args)
        return
    exit_on_sigterm()  # so that the server is stopped
    if args.replot:
        data = json.loads(Path(args.replot).read_text())
        data["note"] = args.note or data.get("note", "")
        plot(data, args.plot)
        print(f"wrote {args.plot}")
        return
    data = run(args)
    data["note"] = args.note
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(data, indent=2) + "\n")
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        plot(data, args.plot)
    print(f"wrote {args.json} and {args.plot}")


if __name__ == "__main__":
    main()
