"""Bytes of process memory per key that ``ConnectRate`` keeps with ``memory://`` storage.

Runs N distinct client addresses through one ``ConnectRate`` rule (one
handshake attempt each, through the rule's ``admit``, on a guard with an
injected clock) and reads ``tracemalloc`` before and after: the difference
divided by N is what one key costs while its window lasts, its key string
included. Every rate is measured on its own guard.

    python benchmarks/connect_rate_memory.py    # 200000 keys; 10/minute, then 10000/day
    python benchmarks/connect_rate_memory.py --keys 2000 --rate 10000/day
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import tracemalloc
from pathlib import Path

# Measure this checkout's ws_guard, not whatever copy is installed.
SRC = str(Path(__file__).resolve().parent.parent / "src")
if SRC not in sys.path:
    sys.path.insert(0, SRC)

from ws_guard import Guard, rules  # noqa: E402
from ws_guard._core.connection import Connection  # noqa: E402
from ws_guard.testing import ManualClock  # noqa: E402
from ws_guard.types import Message  # noqa: E402

DEFAULT_RATES = ("10/minute", "10000/day")
#: A monotonic clock reading of a host up for 11 days.
CLOCK_START = 1e6


async def _receive() -> Message:
    return {"type": "websocket.connect"}


async def _send(message: Message) -> None:
    return None


def _connection(guard: Guard, ip: str) -> Connection:
    scope = {"type": "websocket", "path": "/ws", "client": (ip, 40000), "headers": []}
    return Connection(guard, scope, _receive, _send)


def _address(i: int) -> str:
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


async def bytes_per_key(rate: str, keys: int) -> tuple[float, int]:
    """(bytes per key, keys the rule tracks) after *keys* addresses attempted once."""
    now = ManualClock(CLOCK_START)
    rule = rules.ConnectRate(rate, max_keys=keys)
    guard = Guard(rules=[rule], clock=now)
    await guard.startup()
    try:
        assert await rule.admit(_connection(guard, "192.0.2.1")) is None  # warm the code paths
        gc.collect()
        tracemalloc.start()
        try:
            start = tracemalloc.get_traced_memory()[0]
            for i in range(keys):
                now.now = CLOCK_START + i * 1e-6
                # A new connection per attempt, dropped after it: what stays is the rule's.
                assert await rule.admit(_connection(guard, _address(i))) is None
            gc.collect()
            used = tracemalloc.get_traced_memory()[0] - start
        finally:
            tracemalloc.stop()
        return used / keys, _tracked(rule)
    finally:
        await guard.shutdown()


def _tracked(rule: rules.ConnectRate) -> int:
    for name in ("_logs", "_counters"):
        store = getattr(rule, name, None)
        if store is not None:
            return len(store)
    return -1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--keys", type=int, default=200_000, help="distinct addresses (default 200000)"
    )
    parser.add_argument("--rate", action="append", help="a ConnectRate rate; repeat for several")
    args = parser.parse_args()
    print(f"{'rate':>12} {'keys':>8} {'tracked':>8} {'bytes/key':>10}")
    for rate in args.rate or DEFAULT_RATES:
        per_key, tracked = asyncio.run(bytes_per_key(rate, args.keys))
        print(f"{rate:>12} {args.keys:>8} {tracked:>8} {per_key:>10.0f}")


if __name__ == "__main__":
    main()
