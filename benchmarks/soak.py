"""Soak: connections churn through a fully guarded app; does anything grow or leak?

One uvicorn worker (uvloop) serves a Starlette echo app behind a guard that
uses every kind of rule: JWTAuth (query token, live expiry, in-band refresh),
the message rules, MessageRate per connection and per user,
MaxConnectionsPerKey per user and ConnectRate per address on a real
``redis-server`` (started and stopped here, on a free port), with
ConnectionCount and EventLoopLag shedding. A pool of client tasks (the
``websockets`` client, loopback only) keeps opening short-lived connections
with a mix of behaviours (echo and close, app close, app crash, oversize,
binary, forbidden content, floods, per-user floods, per-user caps, idling
until the token expires, refreshing in band, bad tokens, handshake hammering)
until ``--duration`` ends.

    python benchmarks/soak.py                                  # 10 minutes, 200 clients
    python benchmarks/soak.py --duration 30 --concurrency 100  # a short check

Every second it samples the server's RSS (/proc/<pid>/status VmRSS) and the
guard's snapshot (``/status.json``); every 5 s the Redis key count and the
guard's internal structure sizes. After the churn it waits (bounded) for the
guard to report no active connection and for Redis to hold no key, then
reads the final counts. Outputs: a Markdown report (stdout and ``--report``),
the raw samples (``--json``) and a plot of RSS, connections and keys over
time (``--plot``). Targets: RSS growth < 5 % after warm-up, zero leaked keys,
zero 1006 closes caused by ws_guard.

redis-server and the server die with the script: on SIGINT, SIGTERM or SIGHUP
it cancels its clients and stops them before it exits (within a few seconds:
no episode is finished first), and on Linux a SIGKILL of the script kills
them too (see ``_children``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
SRC = str(ROOT / "src")
for entry in (SRC, str(HERE.parent)):
    if entry not in sys.path:
        sys.path.insert(0, entry)

STATUS_EVERY = 1.0
DETAIL_EVERY = 5.0
DRAIN_TIMEOUT = 30.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
#: Options recorded with the results.
SETTINGS = (
    "duration", "concurrency", "seed", "warmup", "ramp", "think", "max_backoff",
    "conn_limit", "lag_limit", "key_wait", "ws",
)  # fmt: skip


def pin(cpu: int | None) -> None:
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {cpu})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of *pid*, from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


# ---------------------------------------------------------------------------
# Processes: redis-server and the uvicorn server
# ---------------------------------------------------------------------------
def start_redis(workdir: str) -> tuple[subprocess.Popen[bytes], str]:
    from _children import spawn

    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found on PATH; install it: apt-get install redis-server")
    port = free_port()
    proc = spawn(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.2) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return proc, f"redis://127.0.0.1:{port}/0"
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("redis-server did not start")
        time.sleep(0.02)


def start_server(
    args: argparse.Namespace, redis_url: str, workdir: str
) -> tuple[subprocess.Popen[bytes], int]:
    from _children import spawn

    port = free_port()
    cmd = [sys.executable, str(HERE), "--serve", "--port", str(port), "--redis-url", redis_url]
    cmd += ["--conn-limit", str(args.conn_limit), "--lag-limit", str(args.lag_limit)]
    cmd += ["--ws", args.ws]
    if args.server_cpu is not None:
        cmd += ["--server-cpu", str(args.server_cpu)]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))
    )
    # Files, not pipes: a full pipe would stall the server in a long run.
    with (
        open(Path(workdir) / "server.out", "wb") as out,
        open(Path(workdir) / "server.err", "wb") as err,
    ):
        proc = spawn(cmd, stdout=out, stderr=err, env=env)
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"server exited early:\n{(Path(workdir) / 'server.err').read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5):
                return proc, port
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise SystemExit("server did not listen") from None
            time.sleep(0.05)


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGINT, wait: float = 30) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


# ---------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------
class Run:
    """Sampling and milestones around one client pool."""

    def __init__(self, args: argparse.Namespace, server_pid: int, port: int, redis_url: str):
        self.args = args
        self.pid = server_pid
        self.port = port
        self.redis_url = redis_url
        self.samples: list[dict[str, Any]] = []
        self.milestones: dict[str, dict[str, Any]] = {}
        self.phase = "churn"
        self.t0 = 0.0
        self.redis: Any = None
        self.pool: Any = None

    async def get(self, target: str, timeout: float = 5.0) -> Any:
        from _soak_clients import http_get_json

        return await http_get_json("127.0.0.1", self.port, target, timeout)

    async def keys(self) -> dict[str, int]:
        """Keys in Redis, by ws_guard kind (``ws_guard:<kind>:...``), and the total."""
        counts: dict[str, int] = {}
        async for key in self.redis.scan_iter(match="ws_guard:*", count=1000):
            kind = key.decode().split(":", 2)[1]
            counts[kind] = counts.get(kind, 0) + 1
        counts["total"] = int(await self.redis.dbsize())
        return counts

    async def milestone(self, name: str) -> None:
        self.milestones[name] = {
            "t": round(time.monotonic() - self.t0, 2),
            "rss_kib": rss_kib(self.pid),
            "keys": await self.keys(),
            "internals": await self.get("/debug.json?full=1", timeout=30),
            "status": await self.get("/status.json"),
        }

    async def sample_forever(self) -> None:
        next_detail = 0.0
        while True:
            now = time.monotonic() - self.t0
            row: dict[str, Any] = {
                "t": round(now, 2),
                "phase": self.phase,
                "rss_kib": rss_kib(self.pid),
                "cpu_s": cpu_seconds(self.pid),
            }
            try:
                status = await self.get("/status.json", timeout=2)
                gauges = {g["name"]: g for g in status["gauges"]}
                row.update(
                    active=status["active_connections"],
                    admitted=status["handshakes_admitted"],
                    rejected=status["handshakes_rejected"],
                    sheds={name: g["sheds"] for name, g in gauges.items()},
                    lag=gauges.get("event_loop_lag", {}).get("value"),
                )
            except (OSError, asyncio.TimeoutError, ValueError) as exc:
                row["status_error"] = type(exc).__name__
            if self.pool is not None:
                row.update(attempts=self.pool.tally.attempts, opened=self.pool.tally.opened)
            if now >= next_detail:
                next_detail = now + DETAIL_EVERY
                row["keys"] = int(await self.redis.dbsize())
                with contextlib.suppress(OSError, asyncio.TimeoutError, ValueError):
                    row["internals"] = await self.get("/debug.json", timeout=5)
            self.samples.append(row)
            await asyncio.sleep(max(0.0, STATUS_EVERY - (time.monotonic() - self.t0 - now)))

    async def main(self) -> dict[str, Any]:
        import redis.asyncio
        from _soak_clients import Pool

        args = self.args
        self.redis = redis.asyncio.Redis.from_url(self.redis_url)
        self.t0 = time.monotonic()
        await self.milestone("start")
        sampler = asyncio.create_task(self.sample_forever())
        self.pool = Pool(
            f"ws://127.0.0.1:{self.port}/ws",
            concurrency=args.concurrency,
            seed=args.seed,
            stop_at=self.t0 + args.duration,
            think=args.think,
            max_backoff=args.max_backoff,
            ramp=args.ramp,
        )

        async def warmup_end() -> None:
            await asyncio.sleep(args.warmup)
            await self.milestone("warmup_end")

        warm = asyncio.create_task(warmup_end())
        cancelled = await self.pool.run()
        await warm
        self.phase = "drain"
        churn_seconds = time.monotonic() - self.t0
        await self.milestone("churn_end")

        deadline = time.monotonic() + DRAIN_TIMEOUT
        active = None
        while time.monotonic() < deadline:
            active = (await self.get("/status.json"))["active_connections"]
            if active == 0:
                break
            await asyncio.sleep(0.2)
        drained_after = time.monotonic() - self.t0 - churn_seconds
        deadline = time.monotonic() + args.key_wait
        while time.monotonic() < deadline and await self.redis.dbsize():
            await asyncio.sleep(0.5)
        keys_after = time.monotonic() - self.t0 - churn_seconds
        await asyncio.sleep(1.0)  # let the last finishes and sweeps run before the final read
        await self.milestone("final")
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        await self.redis.aclose()
        return {
            "churn_seconds": round(churn_seconds, 1),
            "cancelled_tasks": cancelled,
            "active_at_drain_end": active,
            "drained_after": round(drained_after, 1),
            "keys_waited": round(keys_after - drained_after, 1),
            "client": self.pool.tally.as_dict(),
            "samples": self.samples,
            "milestones": self.milestones,
        }


def run(args: argparse.Namespace) -> dict[str, Any]:
    import uvloop
    from _children import run_stoppable
    from _soak_app import describe_guard
    from _soak_report import summarize_log

    pin(args.client_cpu)
    workdir = tempfile.mkdtemp(prefix="ws_guard-soak-")
    redis_proc, redis_url = start_redis(workdir)
    server = None
    try:
        server, port = start_server(args, redis_url, workdir)
        print(
            f"soak: redis-server pid {redis_proc.pid}, server pid {server.pid} on port {port}",
            file=sys.stderr,
            flush=True,
        )
        # SIGTERM and SIGHUP cancel the clients, then raise SystemExit here.
        data = run_stoppable(Run(args, server.pid, port, redis_url).main(), uvloop.run)
        stop_process(server)
        out = (Path(workdir) / "server.out").read_text().strip().splitlines()
        data["server"] = json.loads(out[-1]) if out else {}
        data["server_log"] = summarize_log(
            (Path(workdir) / "server.err").read_text(errors="replace")
        )
    finally:
        if server is not None:
            stop_process(server, signal.SIGKILL)
        stop_process(redis_proc, signal.SIGTERM)
        if not args.keep_logs:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"server logs kept in {workdir}", file=sys.stderr)
    data.update(
        command=" ".join(["python", *[str(a) for a in sys.argv]]),
        machine={"python": platform.python_version(), "cpus": os.cpu_count()},
        guard=describe_guard(args.conn_limit, args.lag_limit),
        settings={k: getattr(args, k) for k in SETTINGS},
        note=args.note,
    )
    return data


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of churn (600)")
    parser.add_argument("--concurrency", type=int, default=200, help="client tasks (200)")
    parser.add_argument("--seed", type=int, default=1, help="seeds every task's behaviour mix")
    parser.add_argument(
        "--warmup",
        type=float,
        help="seconds before the RSS baseline (default: duration/5, at most 60)",
    )
    parser.add_argument(
        "--ramp",
        type=float,
        help="seconds over which tasks start (default: duration/10, at most 5)",
    )
    parser.add_argument(
        "--think", type=float, default=0.3, help="max pause between a task's episodes (s)"
    )
    parser.add_argument(
        "--max-backoff", type=float, default=3.0, help="cap on a 1013 retry-after wait (s)"
    )
    parser.add_argument(
        "--conn-limit", type=int, help="ConnectionCount limit (default: 0.8 x concurrency)"
    )
    parser.add_argument("--lag-limit", type=float, default=0.5, help="EventLoopLag limit (s)")
    parser.add_argument(
        "--key-wait", type=float, default=40.0, help="max wait for Redis keys to expire (s)"
    )
    parser.add_argument("--ws", default="auto", help="uvicorn WebSocket implementation")
    parser.add_argument("--server-cpu", type=int, help="pin the server to this CPU")
    parser.add_argument("--client-cpu", type=int, help="pin the clients to this CPU")
    parser.add_argument("--json", default=str(ROOT / "docs" / "soak.json"))
    parser.add_argument("--plot", default=str(ROOT / "docs" / "img" / "soak.png"))
    parser.add_argument("--report", default=str(ROOT / "docs" / "soak-report.md"))
    parser.add_argument("--note", default="", help="a line added to the report and the plot")
    parser.add_argument("--keep-logs", action="store_true", help="keep the server's log files")
    parser.add_argument("--replot", metavar="JSON", help="only redraw plot and report from a JSON")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--redis-url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.duration <= 0:
        parser.error("--duration must be positive")
    if args.concurrency < 1 or args.concurrency > 60000:
        parser.error("--concurrency must be between 1 and 60000")
    if args.warmup is None:
        args.warmup = min(60.0, args.duration / 5)
    if not 0 < args.warmup < args.duration:
        parser.error("--warmup must be between 0 and --duration")
    if args.ramp is None:
        args.ramp = min(5.0, args.duration / 10)
    if args.conn_limit is None:
        args.conn_limit = max(1, int(args.concurrency * 0.8))
    if args.think < 0.05:
        parser.error("--think must be at least 0.05")
    return args


def main() -> None:
    args = parse_args()
    if args.serve:
        from _soak_app import serve

        pin(args.server_cpu)
        serve(args.port, args.redis_url, args.conn_limit, args.lag_limit, args.ws)
        return
    from _children import exit_on_sigterm
    from _soak_report import plot, report

    exit_on_sigterm()  # so that run() stops redis-server and the server
    if args.replot:
        data = json.loads(Path(args.replot).read_text())
    else:
        data = run(args)
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(data, indent=1) + "\n")
    text = report(data)
    print(text)
    if args.report:
        Path(args.report).parent.mkdir(parents=True, exist_ok=True)
        Path(args.report).write_text(text)
    if args.plot:
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        plot(data, args.plot)
    written = [str(p) for p in (None if args.replot else args.json, args.report, args.plot) if p]
    print(f"wrote {', '.join(written)}", file=sys.stderr)


if __name__ == "__main__":
    main()
