"""Server instructions per echoed message, bare versus guarded, counted by callgrind.

Wall-clock throughput on a shared 2-core VM moves by ±10 % from one round to
the next (see docs/benchmarks.md), more than the guard's whole cost. An
instruction count does not move with the neighbours' load: valgrind's
callgrind counts every instruction the server process executes, the same
number for the same work whatever else the machine is doing.

Each app runs twice in one uvicorn worker under callgrind (uvloop, httptools,
the default WebSocket implementation), once with a short and once with a long
closed-loop echo load from a client outside valgrind; the difference between
the two totals, divided by the difference in messages, is the steady-state
cost of one echoed message: startup, imports and handshakes cancel out.

    python benchmarks/instructions.py                       # bare, rules, rate, rate_ip, jwt
    python benchmarks/instructions.py --guard rules --short 100 --long 600

The ratio bare/guarded of instructions per message is the throughput ratio a
CPU-bound server would reach, with nothing else on the machine. It is a proxy:
it weighs every instruction alike and ignores cache effects; the echo
benchmark's measured ratio is still the one the targets are stated in.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _children import exit_on_sigterm, run_stoppable, spawn
from _variants import SRC, VARIANTS, variant

HERE = Path(__file__).resolve()
BARE = "bare"
DEFAULT_GUARDS = ("rules", "rate", "rate_ip", "jwt")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve(name: str, port: int) -> None:
    """The server process (run under valgrind)."""
    import uvicorn

    sys.path.insert(0, str(HERE.parent))
    from echo import build_app

    app, _ = build_app(name)
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        ws="auto",
        lifespan="on",
        log_level="warning",
        access_log=False,
    )
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(config).run()


async def load(url: str, connections: int, messages: int, query: object) -> None:
    from websockets.asyncio.client import connect

    async def one(i: int) -> None:
        target = url + (f"?{query(i)}" if callable(query) else "")
        async with connect(target, open_timeout=120, close_timeout=60) as ws:
            for _ in range(messages):
                await ws.send("x" * 64)
                await ws.recv()

    await asyncio.gather(*(one(i) for i in range(connections)))


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited early with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.5)
    raise SystemExit("server under valgrind did not listen in time")


def count(name: str, connections: int, messages: int) -> int:
    """Instructions the server executed for one run of *messages* per connection."""
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        proc = spawn(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                "--quiet",
                sys.executable,
                str(HERE),
                "--serve",
                name,
                "--port",
                str(port),
            ],
            env=env,
        )
        try:
            wait_for_port(port, proc)
            query = None if name == BARE else variant(name).client_query
            run_stoppable(load(f"ws://127.0.0.1:{port}/ws", connections, messages, query))
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(300)
        match = re.search(r"^summary:\s+(\d+)", out.read_text(), re.MULTILINE)
        if match is None:
            raise SystemExit(f"no callgrind summary for {name}")
        return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--guard", action="append", choices=sorted(VARIANTS), help="variants")
    parser.add_argument("--connections", type=int, default=10)
    parser.add_argument("--short", type=int, default=100, help="messages per connection, run 1")
    parser.add_argument("--long", type=int, default=600, help="messages per connection, run 2")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(args.serve, args.port)
        return
    exit_on_sigterm()  # so that the server under valgrind is stopped
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind not found: apt-get install -y valgrind")
    if not 0 < args.short < args.long:
        parser.error("need 0 < --short < --long")
    names = [BARE, *(args.guard or DEFAULT_GUARDS)]
    extra = (args.long - args.short) * args.connections
    per_message: dict[str, float] = {}
    for name in names:
        short = count(name, args.connections, args.short)
        long = count(name, args.connections, args.long)
        per_message[name] = (long - short) / extra
        print(
            f"{name}: {short:,} / {long:,} instructions -> {per_message[name]:,.0f} per message",
            flush=True,
        )
    print()
    print(f"Command: `{shlex.join(['python', 'benchmarks/instructions.py', *sys.argv[1:]])}`")
    print(
        f"\n{args.connections} connections, {args.short} then {args.long} echoed 64 B messages"
        " each; server instructions per message from the difference (valgrind callgrind).\n"
    )
    print("| app | instructions/message | guard adds | bare/guarded |")
    print("|---|---:|---:|---:|")
    bare = per_message[BARE]
    for name in names:
        value = per_message[name]
        adds = "" if name == BARE else f"{value - bare:,.0f}"
        ratio = "1" if name == BARE else f"{bare / value:.3f}"
        print(f"| {name} | {value:,.0f} | {adds} | {ratio} |")


if __name__ == "__main__":
    main()
