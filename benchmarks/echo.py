"""Echo throughput and latency: a bare Starlette endpoint versus the same behind the guard.

Each app runs in its own uvicorn subprocess (one worker, uvloop + httptools,
uvicorn's default WebSocket implementation), pinned to one CPU core; the
picows load client runs in another subprocess pinned to the other core. Every
round measures the bare app and each guard variant back to back (the order
flips every round), and the report gives the median over rounds, so drift on
the machine hits all apps alike.

    python benchmarks/echo.py                                # defaults below
    python benchmarks/echo.py --rounds 3 --duration 3        # a quick look

The client holds ``--connections`` WebSockets in a closed loop: each sends a
message, waits for its echo, and sends the next. Server and client CPU time
come from /proc and getrusage over the measured window, so the table shows
whether the server (not the client) was the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

from _children import exit_on_sigterm, spawn
from _peers import PEERS
from _variants import SRC, VARIANTS, variant

HERE = Path(__file__).resolve()
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
BARE = "bare"


# ---------------------------------------------------------------------------
# CPU accounting (no psutil: /proc and getrusage)
# ---------------------------------------------------------------------------
def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of *pid* (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def core_busy_seconds() -> dict[int, float]:
    """Time each CPU core ran anything (processes, interrupts), from /proc/stat."""
    busy: dict[int, float] = {}
    with open("/proc/stat") as stat:
        for line in stat:
            name, *values = line.split()
            if name.startswith("cpu") and name != "cpu":
                user, nice, system, _idle, _iowait, irq, softirq = map(int, values[:7])
                busy[int(name[3:])] = (user + nice + system + irq + softirq) / CLOCK_TICKS
    return busy


def pin(cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


# ---------------------------------------------------------------------------
# Server (subprocess): one uvicorn worker serving the bare or guarded app
# ---------------------------------------------------------------------------
def build_app(name: str) -> tuple[Any, Any]:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    from ws_guard import WSGuardMiddleware

    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                await websocket.send_text(await websocket.receive_text())
        except WebSocketDisconnect:
            pass

    if name in PEERS:  # another library's limiter, called before each echo
        limit = PEERS[name].build()

        async def limited_echo(websocket: WebSocket) -> None:
            await websocket.accept()
            try:
                while True:
                    text = await websocket.receive_text()
                    await limit(websocket)
                    await websocket.send_text(text)
            except WebSocketDisconnect:
                pass

        return Starlette(routes=[WebSocketRoute("/ws", limited_echo)]), None

    guard = None if name == BARE else variant(name).build()
    middleware = [] if guard is None else [Middleware(WSGuardMiddleware, guard=guard)]
    return Starlette(routes=[WebSocketRoute("/ws", echo)], middleware=middleware), guard


def serve(args: argparse.Namespace) -> None:
    import uvicorn

    pin(args.cpu)
    app, guard = build_app(args.serve)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        ws="auto",
        lifespan="on",
        log_level="warning",
        access_log=False,
    )
    server = uvicorn.Server(config)
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn re-raises the SIGINT after shutdown
        server.run()
    summary: dict[str, Any] = {"ws": getattr(config.ws_protocol_class, "__name__", None)}
    if guard is not None:
        summary["guard"] = guard.metrics.snapshot().as_dict()
    print(json.dumps(summary), flush=True)


# ---------------------------------------------------------------------------
# Load client (subprocess): closed loop over N picows connections
# ---------------------------------------------------------------------------
def run_client(args: argparse.Namespace) -> None:
    import uvloop

    pin(args.cpu)
    print(json.dumps(uvloop.run(_client(args))), flush=True)


async def _client(args: argparse.Namespace) -> dict[str, Any]:
    from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

    payload = b"x" * args.size
    text = WSMsgType.TEXT
    latencies: list[int] = []
    state = {"measuring": False, "running": True, "errors": 0, "closes": 0}
    perf_ns = time.perf_counter_ns

    class Echo(WSListener):
        def __init__(self) -> None:
            self.transport: WSTransport | None = None
            self.sent_at = 0

        def on_ws_connected(self, transport: WSTransport) -> None:
            self.transport = transport

        def start(self) -> None:
            assert self.transport is not None
            self.sent_at = perf_ns()
            self.transport.send(text, payload)

        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            now = perf_ns()
            if frame.msg_type == text:
                if frame.payload_size != args.size:
                    state["errors"] += 1
                if state["measuring"]:
                    latencies.append(now - self.sent_at)
                if state["running"]:
                    self.sent_at = perf_ns()
                    transport.send(text, payload)
            elif frame.msg_type == WSMsgType.CLOSE:
                if state["running"]:
                    state["closes"] += 1  # the server closed on us mid-run
                transport.disconnect()

    query = variant(args.app).client_query if args.app not in (BARE, *PEERS) else None
    urls = [args.url + (f"?{query(i)}" if query else "") for i in range(args.connections)]
    pairs = await asyncio.gather(*(ws_connect(Echo, url) for url in urls))
    for _, listener in pairs:
        cast(Echo, listener).start()
    await asyncio.sleep(args.warmup)

    cores_before = core_busy_seconds()
    server_before = process_cpu_seconds(args.server_pid)
    client_before = own_cpu_seconds()
    started = perf_ns()
    state["measuring"] = True
    await asyncio.sleep(args.duration)
    state["measuring"] = False
    window = (perf_ns() - started) / 1e9
    client_cpu = own_cpu_seconds() - client_before
    server_cpu = process_cpu_seconds(args.server_pid) - server_before
    cores_after = core_busy_seconds()
    state["running"] = False

    await asyncio.sleep(0.1)  # let in-flight echoes land
    for transport, _ in pairs:
        transport.send_close(WSCloseCode.OK)
    await asyncio.wait_for(asyncio.gather(*(t.wait_disconnected() for t, _ in pairs)), timeout=5)

    latencies.sort()
    count = len(latencies)

    def pct(q: float) -> float:
        return latencies[min(count - 1, int(q * count))] / 1000 if count else float("nan")

    def busy(cpu: int | None) -> float | None:
        if cpu is None:
            return None
        return (cores_after[cpu] - cores_before[cpu]) / window

    return {
        "messages": count,
        "window": window,
        "rate": count / window,
        "p50": pct(0.50),
        "p99": pct(0.99),
        "server_cpu": server_cpu / window,
        "server_us_per_message": server_cpu / count * 1e6 if count else float("nan"),
        "client_cpu": client_cpu / window,
        "server_core_busy": busy(args.server_cpu),
        "client_core_busy": busy(args.cpu),
        "errors": state["errors"],
        "closes": state["closes"],
    }


# ---------------------------------------------------------------------------
# Orchestrator: start servers, alternate client rounds, report medians
# ---------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[str], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server on port {port} exited early:\n{proc.stderr.read()}")  # type: ignore[union-attr]
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"server on port {port} did not listen within {timeout} s")


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [SRC, env.get("PYTHONPATH")]))
    return env


def start_server(name: str, args: argparse.Namespace) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    cmd = [sys.executable, str(HERE), "--serve", name, "--port", str(port)]
    if args.server_cpu is not None:
        cmd += ["--cpu", str(args.server_cpu)]
    proc = spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
    wait_listening(port, proc)
    return proc, f"ws://127.0.0.1:{port}/ws"


def stop_server(proc: subprocess.Popen[str]) -> dict[str, Any]:
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=15)
    lines = out.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"server failed (exit {proc.returncode}):\n{err}")
    return dict(json.loads(lines[-1]))


def client_round(name: str, url: str, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, str(HERE), "--client", url, "--app", name, "--server-pid", str(pid)]
    for flag in ("connections", "size", "duration", "warmup"):
        cmd += [f"--{flag}", str(getattr(args, flag))]
    if args.client_cpu is not None:
        cmd += ["--cpu", str(args.client_cpu)]
    if args.server_cpu is not None:
        cmd += ["--server-cpu", str(args.server_cpu)]
    done = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=args.warmup + args.duration + 60,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"client for {name} failed (exit {done.returncode}):\n{done.stderr}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def orchestrate_paired(args: argparse.Namespace) -> None:
    """Bare and guarded served at once, on the same core, by two clients at once.

    Both servers share one pinned core and whatever else the machine does to
    it at that moment, so the ratio of their throughputs in the same window
    is the ratio of their per-message costs, with the neighbours' noise
    common to both. Each client holds half of --connections.
    """
    from concurrent.futures import ThreadPoolExecutor

    names = [BARE, *args.guard]
    half = argparse.Namespace(**{**vars(args), "connections": max(1, args.connections // 2)})
    servers: dict[str, tuple[subprocess.Popen[str], str]] = {}
    rounds: list[dict[str, dict[str, Any]]] = []
    try:
        for name in names:
            servers[name] = start_server(name, args)
        with ThreadPoolExecutor(max_workers=2) as pool:
            for number in range(args.rounds):
                results: dict[str, dict[str, Any]] = {}
                for name in args.guard:
                    futures = {
                        key: pool.submit(
                            client_round, key, servers[key][1], servers[key][0].pid, half
                        )
                        for key in (BARE, name)
                    }
                    pair = {key: future.result() for key, future in futures.items()}
                    results[name] = pair[name]
                    results[f"{BARE}:{name}"] = pair[BARE]
                    print(
                        f"round {number + 1} {name}: {pair[name]['rate']:,.0f} msg/s beside "
                        f"bare {pair[BARE]['rate']:,.0f} "
                        f"(ratio {pair[name]['rate'] / pair[BARE]['rate']:.3f})",
                        file=sys.stderr,
                        flush=True,
                    )
                rounds.append(results)
    finally:
        summaries = {}
        for name, (proc, _) in servers.items():
            if proc.poll() is None:
                summaries[name] = stop_server(proc)
    print(report_paired(args, rounds, summaries))


def report_paired(
    args: argparse.Namespace,
    rounds: list[dict[str, dict[str, Any]]],
    summaries: dict[str, dict[str, Any]],
) -> str:
    out = [
        f"Command: `{shlex.join(['python', 'benchmarks/echo.py', *sys.argv[1:]])}`",
        "",
        f"Paired: bare and guarded served at the same time on "
        f"{'unpinned cores' if args.server_cpu is None else f'CPU {args.server_cpu}'}, "
        f"{max(1, args.connections // 2)} closed-loop "
        f"connections each from two clients"
        f"{'' if args.client_cpu is None else f' on CPU {args.client_cpu}'}; "
        f"{args.rounds} rounds of {args.duration:g} s "
        f"(after {args.warmup:g} s warm-up); median of the per-round ratios.",
        "",
        "| guard | guarded/bare (median) | min | max | guarded msg/s | bare msg/s beside it "
        "| p50 RTT µs guarded / bare |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name in args.guard:
        ratios = sorted(r[name]["rate"] / r[f"{BARE}:{name}"]["rate"] for r in rounds)
        guarded = statistics.median(r[name]["rate"] for r in rounds)
        bare = statistics.median(r[f"{BARE}:{name}"]["rate"] for r in rounds)
        p50 = statistics.median(r[name]["p50"] for r in rounds)
        p50_bare = statistics.median(r[f"{BARE}:{name}"]["p50"] for r in rounds)
        out.append(
            f"| {name} | **{statistics.median(ratios):.3f}** | {ratios[0]:.3f} | "
            f"{ratios[-1]:.3f} | {guarded:,.0f} | {bare:,.0f} | {p50:.0f} / {p50_bare:.0f} |"
        )
    problems = sum(r[k]["errors"] + r[k]["closes"] for r in rounds for k in r)
    if problems:
        out.append(f"\nWARNING: {problems} wrong-size echoes or server closes during the runs")
    return "\n".join(out)


def orchestrate(args: argparse.Namespace) -> None:
    if args.paired:
        orchestrate_paired(args)
        return
    names = [BARE, *args.guard]
    servers: dict[str, tuple[subprocess.Popen[str], str]] = {}
    rounds: list[dict[str, dict[str, Any]]] = []
    try:
        for name in names:
            servers[name] = start_server(name, args)
        for number in range(args.rounds):
            order = names if number % 2 == 0 else names[::-1]
            results = {}
            for name in order:
                proc, url = servers[name]
                results[name] = client_round(name, url, proc.pid, args)
                print(
                    f"round {number + 1} {name}: {results[name]['rate']:,.0f} msg/s",
                    file=sys.stderr,
                    flush=True,
                )
            rounds.append(results)
    finally:
        summaries = {}
        for name, (proc, _) in servers.items():
            if proc.poll() is None:
                summaries[name] = stop_server(proc)
    print(report(args, names, rounds, summaries))


def report(
    args: argparse.Namespace,
    names: list[str],
    rounds: list[dict[str, dict[str, Any]]],
    summaries: dict[str, dict[str, Any]],
) -> str:
    import starlette
    import uvicorn

    def med(name: str, key: str) -> float:
        return float(statistics.median(r[name][key] for r in rounds))

    def ratio(name: str) -> float:
        return float(statistics.median(r[name]["rate"] / r[BARE]["rate"] for r in rounds))

    def cpu_ratio(name: str) -> float:
        key = "server_us_per_message"
        return float(statistics.median(r[BARE][key] / r[name][key] for r in rounds))

    pinning = (
        f"server pinned to CPU {args.server_cpu}, client to CPU {args.client_cpu} "
        "(os.sched_setaffinity)"
        if args.server_cpu is not None
        else "no CPU pinning"
    )
    ws = summaries.get(BARE, {}).get("ws", "?")
    out = [
        f"Command: `{shlex.join(['python', 'benchmarks/echo.py', *sys.argv[1:]])}`",
        "",
        f"Machine: {os.cpu_count()} CPUs, {cpu_model()}; Python {platform.python_version()}, "
        f"uvicorn {uvicorn.__version__} (uvloop, httptools, {ws}), "
        f"starlette {starlette.__version__}; {pinning}.",
        f"Load: {args.connections} connections, closed loop, {args.size} B text messages; "
        f"{args.rounds} rounds of {args.duration:g} s (after {args.warmup:g} s warm-up) per app, "
        "order flipped each round; medians over rounds.",
        "",
        "| app | messages/s | guarded/bare | server CPU µs/message | guarded/bare by CPU "
        "| p50 RTT µs | p99 RTT µs | server CPU | client CPU | other load server/client core |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in names:
        others = "n/a"
        if args.server_cpu is not None:
            server_others = med(name, "server_core_busy") - med(name, "server_cpu")
            client_others = med(name, "client_core_busy") - med(name, "client_cpu")
            others = f"{max(0.0, server_others):.0%} / {max(0.0, client_others):.0%}"
        out.append(
            f"| {name} | {med(name, 'rate'):,.0f} | "
            f"{'1' if name == BARE else f'{ratio(name):.3f}'} | "
            f"{med(name, 'server_us_per_message'):.1f} | "
            f"{'1' if name == BARE else f'{cpu_ratio(name):.3f}'} | "
            f"{med(name, 'p50'):.0f} | {med(name, 'p99'):.0f} | "
            f"{med(name, 'server_cpu'):.0%} | {med(name, 'client_cpu'):.0%} | {others} |"
        )
    out += ["", "Per round (messages/s):", ""]
    out.append("| round | " + " | ".join(names) + " |")
    out.append("|---" * (len(names) + 1) + "|")
    for number, result in enumerate(rounds, 1):
        out.append(f"| {number} | " + " | ".join(f"{result[n]['rate']:,.0f}" for n in names) + " |")
    notes = [
        "- guarded/bare: median over rounds of the ratio within each round. By CPU: the ratio "
        "of server CPU time per message (bare/guarded), which other load on the machine "
        "disturbs less than wall-clock throughput.",
    ]
    for name in args.guard:
        description = PEERS[name].description if name in PEERS else VARIANTS[name].description
        guard = summaries.get(name, {}).get("guard")
        if guard is not None:
            closes = {k: v for k, v in guard["closes_by_initiator"].items() if k != "client"}
            description += (
                f"; guard admitted {guard['handshakes_admitted']} connections, "
                f"rejected {guard['handshakes_rejected']}, closes by guard/app: {closes or 0}"
            )
        notes.append(f"- `{name}`: {description}")
    problems = sum(r[n]["errors"] + r[n]["closes"] for r in rounds for n in names)
    if problems:
        notes.append(f"- WARNING: {problems} wrong-size echoes or server closes during the runs")
    if args.server_cpu is not None:
        others = max(
            max(
                med(n, f"{side}_core_busy") - med(n, f"{side}_cpu") for side in ("server", "client")
            )
            for n in names
        )
        if others > 0.1:
            notes.append(
                f"- WARNING: other processes kept a benchmark core up to {others:.0%} busy; "
                "these numbers are disturbed, re-run on a quiet machine"
            )
    if max(med(n, "client_cpu") for n in names) > 0.9:
        notes.append("- WARNING: the client used > 90 % of its core; it may be the bottleneck")
    return "\n".join([*out, "", *notes])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--guard",
        action="append",
        choices=sorted(VARIANTS) + sorted(PEERS),
        help="guard variant to compare with the bare app; repeat for several (default: rules)",
    )
    parser.add_argument("--rounds", type=int, default=5, help="bare/guarded rounds")
    parser.add_argument("--duration", type=float, default=4.0, help="measured seconds per app")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--connections", type=int, default=50, help="concurrent WebSockets")
    parser.add_argument("--size", type=int, default=64, help="text message size in bytes")
    parser.add_argument("--server-cpu", type=int, default=0, help="core for the servers")
    parser.add_argument("--client-cpu", type=int, default=1, help="core for the load client")
    parser.add_argument("--no-pin", action="store_true", help="do not pin to CPU cores")
    parser.add_argument(
        "--paired",
        action="store_true",
        help="serve bare and each guarded app at the same time on the same core",
    )
    # Internal: the same script is the server and the client subprocess.
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--client", help=argparse.SUPPRESS)
    parser.add_argument("--app", default=BARE, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--server-pid", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.guard = args.guard or ["rules"]
    if args.no_pin:
        args.server_cpu = args.client_cpu = None
    elif args.serve is None and args.client is None:
        available = os.sched_getaffinity(0)
        for cpu in (args.server_cpu, args.client_cpu):
            if cpu not in available:
                parser.error(f"CPU {cpu} is not available (have {sorted(available)}); try --no-pin")
        if args.server_cpu == args.client_cpu:
            parser.error("--server-cpu and --client-cpu must differ")
    for flag in ("rounds", "connections", "size"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be at least 1")
    if args.duration <= 0 or args.warmup < 0:
        parser.error("--duration must be positive and --warmup not negative")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.serve is not None:
        serve(args)
    elif args.client is not None:
        args.url = args.client
        run_client(args)
    else:
        exit_on_sigterm()  # so that the servers are stopped
        orchestrate(args)


if __name__ == "__main__":
    main()
