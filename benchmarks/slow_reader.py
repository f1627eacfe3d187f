"""What an ASGI server does when a WebSocket client stops reading while the app sends.

For each server, a child process serves one app that streams 16 KiB binary
messages as fast as ``send()`` returns, up to ``--cap`` MiB. The client is a
raw socket that completes the handshake and then never reads. The parent
polls the app's progress (bytes whose ``send()`` returned, at ``/stats``) and
the server's resident memory (``/proc/<pid>/status``) for ``--seconds``:

* **blocks**: progress stops; the app's pending ``send()`` waits for the
  client (backpressure). The bytes it got through are the kernel's socket
  buffers plus the server's own write buffer.
* **buffers**: progress runs on to the cap while the server's memory grows
  with it (no backpressure: the server keeps what the client did not read).

    python benchmarks/slow_reader.py                 # every server
    python benchmarks/slow_reader.py --servers wsproto hypercorn-trio

With ``--guard SECONDS`` the app runs behind this checkout's ws_guard with
``rules.SlowConsumer(SECONDS)``, stops after a send that was held, and the
table says what the guard did and what the client finds when it reads again
after the stall.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from _children import exit_on_sigterm, spawn

HERE = Path(__file__).resolve()
# Serve this checkout's ws_guard, not whatever copy is installed.
SRC = str(HERE.parent.parent / "src")
if SRC not in sys.path:
    sys.path.insert(0, SRC)
SERVERS = (
    "websockets-sansio",
    "websockets",
    "wsproto",
    "hypercorn-asyncio",
    "hypercorn-trio",
    "granian",
    "daphne",
)
CHUNK = 16 * 1024
MIB = 1024 * 1024


# ---------------------------------------------------------------------------
# The child: one server with the streaming app
# ---------------------------------------------------------------------------
def make_app(cap: int, guard_seconds: float | None) -> Any:
    stats: dict[str, Any] = {
        "sent": 0,
        "pending_since": None,
        "send_returned": None,
        "longest_wait": 0.0,
        "closes": {},
        "dropped": 0,
    }
    clock = time.monotonic
    guard: Any = None

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] == "http":
            now = clock()
            since = stats["pending_since"]
            if guard is not None:
                snap = guard.metrics.snapshot()
                stats["closes"] = dict(snap.closes_by_rule)
                stats["dropped"] = snap.dropped_sends
            body = json.dumps({**stats, "pending_for": None if since is None else now - since})
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": body.encode()})
            return
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        payload = b"x" * CHUNK
        while stats["sent"] < cap:
            started = stats["pending_since"] = clock()
            await send({"type": "websocket.send", "bytes": payload})
            stats["pending_since"] = None
            waited = clock() - started
            stats["longest_wait"] = max(stats["longest_wait"], waited)
            if guard_seconds is not None and waited > guard_seconds / 2:
                # Held until the guard ended it: read the close, as an app's loop would.
                stats["received"] = (await receive()).get("reason")
                return
            stats["sent"] += CHUNK
        stats["send_returned"] = "cap"

    if guard_seconds is None:
        return app
    from ws_guard import Guard, WSGuardMiddleware, rules

    guard = Guard(rules=[rules.SlowConsumer(guard_seconds)])
    return WSGuardMiddleware(app, guard=guard)  # the stats read it through the closure


def serve(kind: str, port: int, cap: int, guard_seconds: float | None) -> None:
    app = make_app(cap, guard_seconds)
    if kind.startswith("hypercorn"):
        from hypercorn.config import Config

        config = Config()
        config.bind = [f"127.0.0.1:{port}"]
        config.accesslog = None
        config.loglevel = "WARNING"
        if kind == "hypercorn-trio":
            import trio
            from hypercorn.trio import serve as trio_serve

            trio.run(trio_serve, app, config)
        else:
            import asyncio

            from hypercorn.asyncio import serve as asyncio_serve

            asyncio.run(asyncio_serve(app, config))
        return
    if kind == "granian":
        import asyncio

        from granian.constants import Interfaces
        from granian.server.embed import Server as GranianServer

        # Embedded: the same Rust WebSocket stack as `granian --interface asgi`, in this process.
        server = GranianServer(app, address="127.0.0.1", port=port, interface=Interfaces.ASGI)
        asyncio.run(server.serve())
        return
    if kind == "daphne":
        from daphne.server import Server as DaphneServer  # installs Twisted's asyncio reactor

        endpoint = f"tcp:port={port}:interface=127.0.0.1"
        DaphneServer(application=app, endpoints=[endpoint], verbosity=0).run()
        return
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=port, ws=kind, log_level="warning", lifespan="on")


# ---------------------------------------------------------------------------
# The parent: a client that never reads, and what the server does about it
# ---------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def stats(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as response:
        result: dict[str, Any] = json.loads(response.read())
        return result


def handshake_and_stop_reading(port: int) -> socket.socket:
    """A WebSocket handshake on a raw socket; the caller then never reads from it."""
    # 30 s: on daphne the 101 goes out only once the app stops sending (docs/servers.md).
    sock = socket.create_connection(("127.0.0.1", port), 30)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)  # byte by byte: read nothing past the response head
        if not chunk:
            raise RuntimeError("server closed during the handshake")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"handshake refused: {head[:40]!r}")
    return sock


def _exactly(sock: socket.socket, size: int) -> bytes | None:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(min(size - len(data), 1 << 20))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def read_to_close(sock: socket.socket) -> str:
    """Read the server's frames to the end: what the client finds (a close frame, or EOF)."""
    sock.settimeout(10)
    try:
        while True:
            header = _exactly(sock, 2)
            if header is None:
                return "EOF, no close frame (1006)"
            opcode, length = header[0] & 0x0F, header[1] & 0x7F
            if length >= 126:
                extended = _exactly(sock, 2 if length == 126 else 8) or b""
                length = int.from_bytes(extended, "big")
            payload = _exactly(sock, length)
            if payload is None:
                return "EOF, no close frame (1006)"
            if opcode == 0x8:
                code = int.from_bytes(payload[:2], "big")
                return f"close {code} {payload[2:].decode()}"
    except TimeoutError:
        return "nothing more within 10 s (connection left open)"
    except OSError as exc:
        return f"{type(exc).__name__}"


def measure(kind: str, seconds: float, cap: int, guard_seconds: float | None) -> dict[str, Any]:
    port = free_port()
    # The child takes --cap in MiB, as the command line does.
    args = [
        sys.executable,
        str(HERE),
        "--serve",
        kind,
        "--port",
        str(port),
        "--cap",
        str(cap // MIB),
    ]
    if guard_seconds is not None:
        args += ["--guard", str(guard_seconds)]
    child = spawn(args)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                stats(port)
                break
            except OSError:
                if child.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{kind} did not start") from None
                time.sleep(0.05)
        base_rss = rss_mib(child.pid)
        sock = handshake_and_stop_reading(port)
        try:
            end = time.monotonic() + seconds
            peak = base_rss
            while time.monotonic() < end:
                time.sleep(0.1)
                peak = max(peak, rss_mib(child.pid))
                if stats(port)["send_returned"] == "cap":
                    break
            last = stats(port)
            # The client reads again, after the stall: what reaches it.
            found = read_to_close(sock) if guard_seconds is not None else ""
        finally:
            sock.close()
    finally:
        child.terminate()
        try:
            child.wait(3)
        except subprocess.TimeoutExpired:  # a server still waiting on the stalled socket
            child.kill()
            child.wait(3)
    blocked = last["pending_for"] is not None and last["send_returned"] != "cap"
    return {
        "server": kind,
        "behaviour": "blocks" if blocked else "buffers",
        "sent_kib": last["sent"] // 1024,
        "pending_for_s": round(last["pending_for"] or 0.0, 2),
        "rss_growth_mib": round(peak - base_rss, 1),
        "longest_wait_s": round(last["longest_wait"], 2),
        "closes": last["closes"],
        "dropped": last["dropped"],
        "found": found,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", nargs="+", choices=SERVERS, default=list(SERVERS))
    parser.add_argument("--seconds", type=float, default=3.0, help="how long the client stalls")
    parser.add_argument("--cap", type=int, default=256, help="MiB the app sends at most")
    parser.add_argument("--guard", type=float, default=None, help="add SlowConsumer(seconds)")
    parser.add_argument("--serve", choices=SERVERS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.cap * MIB, args.guard)
        return
    exit_on_sigterm()
    if args.guard is None:
        print("| server | app's send() | bytes sent before it waits | waiting for | RSS growth |")
        print("| --- | --- | --- | --- | --- |")
    else:
        print(
            "| server | longest send | closes by rule | sends dropped | pending at the end "
            "| the client, reading after the stall, finds |"
        )
        print("| --- | --- | --- | --- | --- | --- |")
    for kind in args.servers:
        row = measure(kind, args.seconds, args.cap * MIB, args.guard)
        if args.guard is None:
            print(
                f"| {row['server']} | {row['behaviour']} | {row['sent_kib']} KiB "
                f"| {row['pending_for_s']} s | {row['rss_growth_mib']} MiB |",
                flush=True,
            )
        else:
            print(
                f"| {row['server']} | {row['longest_wait_s']} s | {row['closes']} "
                f"| {row['dropped']} | {row['pending_for_s']} s | {row['found']} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
