"""Idle connections: guard memory per connection, timers, CPU while idle.

Opens N in-process WebSocket connections (``ws_guard.testing.ScriptedWebSocket``)
twice, through the bare echo app and through the same app behind a guard with
the message rules and, by ``--rules``, ``JWTAuth`` (HS256, Bearer header,
refresh on; ``jwt``, the default), ``IdleTimeout`` + ``MaxLifetime``
(``lifetime``) or all three (``jwt+lifetime``), and reports the traced memory
difference per connection, the scheduler's pending deadlines and armed
timers, and the CPU the process uses while they all sit idle.

    PYTHONPATH=src:tests python benchmarks/jwt_idle.py --connections 10000
    PYTHONPATH=src:tests python benchmarks/jwt_idle.py --connections 10000 --rules lifetime
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time
import tracemalloc
from typing import Any

import jwt

from ws_guard import Guard, WSGuardMiddleware, rules
from ws_guard.testing import ScriptedWebSocket

SECRET = "0123456789abcdef0123456789abcdef"
#: What ``--rules`` may name, beside the message rules every guard has.
RULE_SETS = ("jwt", "lifetime", "jwt+lifetime")
#: Far beyond any run: the lifetime deadlines are armed but never fire.
IDLE_SECONDS = 3600.0
LIFETIME_SECONDS = 86_400.0


async def echo(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "text": message.get("text")})


async def open_all(app: Any, tokens: list[str]) -> list[ScriptedWebSocket]:
    sockets = []
    for token in tokens:
        ws = ScriptedWebSocket(app, headers=[(b"authorization", f"Bearer {token}".encode())])
        await ws.connect()
        sockets.append(ws)
    for ws in sockets:
        await ws.expect("websocket.accept", timeout=30)
    return sockets


async def close_all(sockets: list[ScriptedWebSocket]) -> None:
    for ws in sockets:
        await ws.disconnect()
    for ws in sockets:
        await ws.finished(timeout=30)


async def measure(app: Any, tokens: list[str]) -> tuple[int, list[ScriptedWebSocket]]:
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    sockets = await open_all(app, tokens)
    await asyncio.sleep(0)
    gc.collect()
    return tracemalloc.get_traced_memory()[0] - before, sockets


def guard_rules(kind: str) -> list[rules.Rule]:
    chosen: list[rules.Rule] = []
    if "jwt" in kind:
        chosen.append(rules.JWTAuth(SECRET, algorithms=["HS256"]))
    chosen += [rules.MaxMessageSize(64 * 1024), rules.MessageTypes(text=True, binary=False)]
    if "lifetime" in kind:
        chosen += [rules.IdleTimeout(IDLE_SECONDS), rules.MaxLifetime(LIFETIME_SECONDS)]
    return chosen


async def main(n: int, idle: float, kind: str) -> None:
    exp = int(time.time()) + 3600
    tokens = [jwt.encode({"sub": f"user{i}", "exp": exp + i}, SECRET) for i in range(n)]
    guard = Guard(rules=guard_rules(kind))
    guarded = WSGuardMiddleware(echo, guard=guard)
    tracemalloc.start()
    bare_bytes, sockets = await measure(echo, tokens)
    await close_all(sockets)
    del sockets
    guarded_bytes, sockets = await measure(guarded, tokens)
    tracemalloc.stop()

    loop = asyncio.get_running_loop()
    # asyncio's private timer heap; a cancelled handle stays in it until popped.
    scheduled = sum(1 for h in getattr(loop, "_scheduled", ()) if not h.cancelled())
    cpu0, wall0 = time.process_time(), time.monotonic()
    await asyncio.sleep(idle)
    cpu = time.process_time() - cpu0
    wall = time.monotonic() - wall0

    print(f"rules:                            message rules + {kind}")
    print(f"connections:                      {n}")
    print(f"bare app, traced bytes/conn:      {bare_bytes / n:8.0f}")
    print(f"guarded app, traced bytes/conn:   {guarded_bytes / n:8.0f}")
    print(f"guard overhead bytes/conn:        {(guarded_bytes - bare_bytes) / n:8.0f}")
    print(f"scheduler deadlines pending:      {len(guard.scheduler)}")
    print(f"scheduler timer armed:            {guard.scheduler.timer_armed}")
    print(f"event-loop timer handles (live):  {scheduled}")
    print(f"CPU while idle:                   {cpu * 1000:.1f} ms over {wall:.2f} s")
    await close_all(sockets)
    print(f"after close: deadlines={len(guard.scheduler)} armed={guard.scheduler.timer_armed}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--idle", type=float, default=2.0, help="seconds to sit idle")
    parser.add_argument("--rules", choices=RULE_SETS, default="jwt", help="rules beside size/type")
    args = parser.parse_args()
    asyncio.run(main(args.connections, args.idle, args.rules))
