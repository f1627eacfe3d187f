"""Two uvicorn workers sharing one Redis cap: does the cap hold, and what does Redis cost?

A guard with ``JWTAuth`` (HS256) and ``MaxConnectionsPerKey(--cap,
key=rules.by_user)`` on a real ``redis-server`` (started and stopped here, on a
free port) runs in ``--workers`` uvicorn workers (uvloop, httptools; the
kernel spreads the connections over the workers). Client processes open
``--users`` x ``--per-user`` idle connections, each user asking for more than
the cap. After the handshakes settle, the clients count the connections each
user still holds: with the cap shared through Redis, every user holds
exactly ``--cap``, however the workers split them. Redis' own command
counters (``INFO commandstats``) give the commands per handshake, and
psutil the workers' resident memory.

    python benchmarks/scale_cluster.py                      # 2 workers, 500 users x 25, cap 20
    python benchmarks/scale_cluster.py --users 100 --per-user 5 --cap 3

The open-file limit is raised to its hard limit, as in ``scale.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _children import exit_on_sigterm, spawn
from _variants import SRC
from scale import PER_CLIENT, free_port, idle, listening, raise_fd_limit, stop
from soak import start_redis

HERE = Path(__file__).resolve()
#: The worker's settings, read by :func:`app` in each worker process.
ENV_REDIS = "WS_GUARD_SCALE_REDIS"
ENV_CAP = "WS_GUARD_SCALE_CAP"


def app() -> Any:
    """The guarded app of one worker (``uvicorn --factory scale_cluster:app``)."""
    from _variants import _jwt_auth
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.routing import WebSocketRoute

    from ws_guard import Guard, WSGuardMiddleware, rules

    guard = Guard(
        rules=[
            _jwt_auth(),
            rules.MaxConnectionsPerKey(int(os.environ[ENV_CAP]), key=rules.by_user),
        ],
        storage=os.environ[ENV_REDIS],
    )

    return Starlette(
        routes=[WebSocketRoute("/ws", idle)],
        middleware=[Middleware(WSGuardMiddleware, guard=guard)],
    )


def redis_calls(url: str) -> int:
    """Commands Redis has run so far (``INFO commandstats``, all commands)."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return sum(int(entry["calls"]) for entry in stats.values())


def start_workers(args: argparse.Namespace, redis_url: str) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    cmd = [
        sys.executable, "-m", "uvicorn", "scale_cluster:app", "--factory",
        "--app-dir", str(HERE.parent), "--workers", str(args.workers),
        "--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop", "--http", "httptools",
        "--ws-ping-interval", "3600", "--backlog", "4096", "--log-level", "warning",
        "--no-access-log", "--timeout-graceful-shutdown", "1",
    ]  # fmt: skip
    path = os.pathsep.join(filter(None, [SRC, str(HERE.parent), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path, **{ENV_REDIS: redis_url, ENV_CAP: str(args.cap)})
    proc = spawn(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    listening(proc, port)
    time.sleep(1.0)  # every worker has started, not only the first
    return proc, port


def workers_rss(proc: subprocess.Popen[str]) -> list[int]:
    import psutil

    return [
        child.memory_info().rss
        for child in psutil.Process(proc.pid).children()
        if not any("resource_tracker" in part for part in child.cmdline())
    ]


def open_clients(port: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Start the client processes; each one's report once its handshakes settled."""
    total = args.users * args.per_user
    procs = []
    for first in range(0, total, PER_CLIENT):
        n = min(PER_CLIENT, total - first)
        cmd = [
            sys.executable, str(HERE.parent / "scale.py"), "--clients", str(n),
            "--first", str(first), "--clients-url", f"ws://127.0.0.1:{port}/ws",
            "--source", f"127.0.0.{2 + len(procs)}", "--guard", "jwt",
            "--users", str(args.users), "--settle", str(args.settle),
        ]  # fmt: skip
        procs.append(
            spawn(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=dict(os.environ, PYTHONPATH=SRC),
            )
        )
    reports = []
    for proc in procs:
        proc.stdout.readline()  # type: ignore[union-attr]  # "ready"
        line = proc.stdout.readline()  # type: ignore[union-attr]  # "settled"
        if not line:
            raise SystemExit(f"client exited: {proc.stderr.read()}")  # type: ignore[union-attr]
        reports.append(json.loads(line))
    for proc in procs:
        proc.kill()
        proc.wait()
    return reports


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as workdir:
        redis_proc, redis_url = start_redis(workdir)
        try:
            server, port = start_workers(args, redis_url)
            try:
                rss_before = workers_rss(server)
                calls_before = redis_calls(redis_url)
                reports = open_clients(port, args)
                calls = redis_calls(redis_url) - calls_before
                rss_after = workers_rss(server)
            finally:
                stop(server)
        finally:
            redis_proc.kill()
            redis_proc.wait()
    held: dict[str, int] = {}
    closes: dict[str, int] = {}
    for report in reports:
        for user, n in report["held_by_user"].items():
            held[user] = held.get(user, 0) + n
        for code, n in report["closes"].items():
            closes[code] = closes.get(code, 0) + n
    attempts = args.users * args.per_user
    return {
        "command": " ".join(["python", "benchmarks/scale_cluster.py", *sys.argv[1:]]),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "settings": vars(args),
        "attempts": attempts,
        "held": sum(held.values()),
        "held_per_user_min": min(held.values(), default=0),
        "held_per_user_max": max(held.values(), default=0),
        "users_holding": len(held),
        "closes": closes,
        "redis_commands": calls,
        "redis_commands_per_handshake": calls / attempts,
        "workers_rss_before": rss_before,
        "workers_rss_after": rss_after,
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--users", type=int, default=500)
    parser.add_argument("--per-user", type=int, default=25, help="connections each user asks for")
    parser.add_argument("--cap", type=int, default=20, help="MaxConnectionsPerKey per user")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after the handshakes")
    parser.add_argument("--json", default="", help="also write the result here")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    exit_on_sigterm()
    raise_fd_limit()  # inherited by the workers and the clients
    data = run(args)
    text = json.dumps(data, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
