"""Control-plane costs: the handshake's revocation and ban checks, and Redis fan-out latency.

- Handshake checks, microseconds per handshake: the revocation lookup
  (``Revocations.revoked``, two dict lookups) and ``AutoBan.admit`` on
  memory; with ``--redis``, the revocation check a handshake adds on Redis
  (one ``EXISTS`` round trip). Median of ``--repeats`` runs of ``--calls``.
- Fan-out latency, milliseconds: a guard publishes ``disconnect`` for a
  connection held by a second guard on the same Redis (its subscriber task,
  its own client), until that connection's close frame is handed to the
  server. ``--fanout`` calls, p50 and p99. Both guards share this process's
  event loop, so the figure is Redis' round trip plus one loop turn; across
  processes add the other process's scheduling.

    python benchmarks/control.py                 # memory only
    python benchmarks/control.py --redis         # starts redis-server on a free port
    python benchmarks/control.py --redis-url redis://127.0.0.1:6379/15
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

# Measure this checkout's ws_guard, not whatever copy is installed.
SRC = str(Path(__file__).resolve().parent.parent / "src")
if SRC not in sys.path:
    sys.path.insert(0, SRC)

from ws_guard import Guard, WSGuardMiddleware, rules  # noqa: E402
from ws_guard._core.connection import Connection  # noqa: E402
from ws_guard.testing import ScriptedWebSocket  # noqa: E402
from ws_guard.types import Message, Receive, Scope, Send  # noqa: E402


async def _receive() -> Message:
    return {"type": "websocket.connect"}


async def _send(message: Message) -> None:
    return None


async def _echo(scope: Scope, receive: Receive, send: Send) -> None:
    await receive()
    await send({"type": "websocket.accept"})
    while (await receive())["type"] != "websocket.disconnect":
        pass


def _per_call_us(times: list[float], calls: int) -> float:
    return statistics.median(times) / calls * 1e6


async def memory_checks(calls: int, repeats: int) -> dict[str, float]:
    """µs per handshake: the revocation lookup, and AutoBan.admit, on memory."""
    ban = rules.AutoBan(after=5, within=60, ban=600)
    guard = Guard(rules=[ban])
    await guard.startup()
    try:
        for i in range(10_000):  # a store with revocations in force
            guard.revocations.add(jti=f"t{i}", subject=None, expires=guard.scheduler.clock() + 60)
        scope = {"type": "websocket", "path": "/ws", "client": ("192.0.2.1", 1), "headers": []}
        conn = Connection(guard, scope, _receive, _send)
        lookups, admits = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(calls):
                guard.revocations.revoked("absent", "alice")
            lookups.append(time.perf_counter() - start)
            start = time.perf_counter()
            for _ in range(calls):
                await ban.admit(conn.full)
            admits.append(time.perf_counter() - start)
        return {
            "revocation lookup (memory)": _per_call_us(lookups, calls),
            "AutoBan.admit (memory)": _per_call_us(admits, calls),
        }
    finally:
        await guard.shutdown()


async def redis_checks(url: str, calls: int, repeats: int) -> dict[str, float]:
    """µs per handshake: the shared revocation check (one EXISTS)."""
    guard = Guard(storage=url, namespace="bench-control")
    await guard.startup()
    try:
        remote = guard.revocations.remote
        assert remote is not None
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(calls):
                await remote("absent", "alice")
            runs.append(time.perf_counter() - start)
        return {"revocation check (Redis EXISTS)": _per_call_us(runs, calls)}
    finally:
        await guard.shutdown()


async def fanout(url: str, count: int) -> tuple[float, float]:
    """(p50, p99) milliseconds from ``disconnect`` to the other guard's close frame."""
    sender = Guard(storage=url, namespace="bench-control")
    receiver = Guard(storage=url, namespace="bench-control")
    await sender.startup()
    await receiver.startup()
    try:
        deadline = time.monotonic() + 10
        while not receiver.channel.subscribed:
            if time.monotonic() > deadline:
                raise RuntimeError("the receiving guard never subscribed")
            await asyncio.sleep(0.01)
        app = WSGuardMiddleware(_echo, guard=receiver)
        latencies = []
        for _ in range(count):
            ws = ScriptedWebSocket(app, "/ws")
            await ws.connect()
            await ws.expect("websocket.accept")
            (conn,) = receiver.connections()
            start = time.perf_counter()
            await sender.disconnect(connection_id=conn.id)
            await ws.expect("websocket.close", timeout=5.0, code=1008)
            latencies.append((time.perf_counter() - start) * 1000)
            await ws.disconnect()
            await ws.finished()
        latencies.sort()
        return statistics.median(latencies), latencies[min(len(latencies) - 1, int(0.99 * count))]
    finally:
        await sender.shutdown()
        await receiver.shutdown()


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """A throwaway redis-server on a free loopback port; its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("--redis needs redis-server on PATH (apt-get install redis-server)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise SystemExit("redis-server did not start") from None
                time.sleep(0.02)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


async def main(args: argparse.Namespace, url: str | None) -> None:
    costs = await memory_checks(args.calls, args.repeats)
    if url is not None:
        costs.update(await redis_checks(url, max(1, args.calls // 20), args.repeats))
    print("| check at the handshake | µs per handshake |")
    print("|---|---|")
    for name, value in costs.items():
        print(f"| {name} | {value:.2f} |")
    if url is not None:
        p50, p99 = await fanout(url, args.fanout)
        print(
            f"\nfan-out of disconnect over {args.fanout} calls: p50 {p50:.2f} ms, p99 {p99:.2f} ms"
        )


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=_positive, default=20_000, help="calls per run")
    parser.add_argument("--repeats", type=_positive, default=5, help="runs; the median counts")
    parser.add_argument("--fanout", type=_positive, default=100, help="disconnects timed")
    parser.add_argument("--redis", action="store_true", help="start a redis-server of its own")
    parser.add_argument("--redis-url", help="use this Redis (a database the run may write)")
    args = parser.parse_args()
    if args.redis_url:
        asyncio.run(main(args, args.redis_url))
    elif args.redis:
        with redis_server() as url:
            asyncio.run(main(args, url))
    else:
        asyncio.run(main(args, None))


if __name__ == "__main__":
    cli()
