"""Memory storage stays bounded: 100k addresses come and go, memory returns to its start.

The 100k run reads the process' resident memory (tracemalloc would make it
ten times slower); a 10k run under tracemalloc checks that nothing at all is
left behind.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import tracemalloc
from collections.abc import Callable

import pytest

from tests.support.paths import ROOT
from tests.support.rate_helpers import Clock
from ws_guard import Guard, rules
from ws_guard._core.connection import Connection
from ws_guard.types import Message

N = 100_000
MESSAGE: Message = {"type": "websocket.receive", "text": "hi"}


async def _receive() -> Message:
    return {"type": "websocket.connect"}


async def _send(message: Message) -> None:
    return None


def _scope(ip: str) -> dict[str, object]:
    return {"type": "websocket", "path": "/ws", "client": (ip, 40000), "headers": []}


async def _visit(guard: Guard, ip: str) -> None:
    """One real handshake, one message through the checks, and the finish."""
    conn = Connection(guard, _scope(ip), _receive, _send)
    if await conn.handshake():
        assert conn._check is not None
        assert conn._check(MESSAGE) is None
    await conn.finish()


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def _come_and_go(count: int, measure: Callable[[], int]) -> tuple[int, int, int]:
    """Memory at the start, with *count* live keys, and after they expired."""
    clock = Clock(0.0)
    connect_rate = rules.ConnectRate("5/minute")
    message_rate = rules.MessageRate("10/second", key=rules.by_ip)
    cap = rules.MaxConnectionsPerKey(2)
    guard = Guard(rules=[connect_rate, cap, message_rate], clock=clock)
    await guard.startup()
    logs, windows = connect_rate._counters, message_rate._maps[0]
    assert logs is not None
    try:
        await _visit(guard, "192.0.2.1")  # warm every code path before measuring
        clock.now = 200.0
        logs.sweep(clock.now)
        windows.sweep(clock.now)
        gc.collect()
        start = measure()
        for i in range(count):
            await _visit(guard, f"10.{i >> 16}.{(i >> 8) & 255}.{i & 255}")
        gc.collect()
        full = measure()
        assert len(logs) == len(windows) == count
        assert cap._counts == {}  # every slot was given back at finish
        # Two windows later (a ConnectRate key's counts matter until the end of
        # the window after its last attempt's) the sweeps drop every key.
        clock.now += 120.0
        assert logs.sweep(clock.now) == windows.sweep(clock.now) == count
        gc.collect()
        end = measure()
    finally:
        await guard.shutdown()
    snap = guard.metrics.snapshot()
    assert snap.handshakes_admitted == count + 1
    assert snap.active_connections == 0
    return start, full, end


#: Runs the 100k visit in a fresh interpreter and prints start, full and end RSS.
_FRESH_RUN = (
    "import asyncio\n"
    "from tests.unit.rules.limits.test_rate_memory_bound import N, _come_and_go, _rss\n"
    "print(*asyncio.run(_come_and_go(N, _rss)))\n"
)


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc")
def test_100k_addresses_come_and_go_rss() -> None:
    # In a fresh interpreter: resident memory is coarse, and in the test
    # run's own process it depended on the free pages earlier tests left
    # behind (which the keys reused, or not). 100k live keys take about
    # 60 MB; the bound is loose, and the 10k run below is exact.
    run = subprocess.run(
        [sys.executable, "-c", _FRESH_RUN],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    start, full, end = map(int, run.stdout.split())
    assert full - start > 20_000_000, "the keys were not held: the run measured nothing"
    assert end - start < 10_000_000, f"{end - start} bytes left (peak +{full - start})"


async def test_10k_addresses_leave_nothing_behind() -> None:
    tracemalloc.start()
    try:
        start, full, end = await _come_and_go(10_000, lambda: tracemalloc.get_traced_memory()[0])
    finally:
        tracemalloc.stop()
    assert full - start > 2_000_000
    assert end - start < 100_000, f"{end - start} bytes left after the keys expired"
