"""CPU cost of the event-loop lag sampler in an otherwise idle process.

Runs an event loop for ``--seconds`` with and without an ``EventLoopLag``
sampler and compares the process CPU time (``time.process_time``, which only
counts this process, so other load on the machine does not inflate it).
Also measures the cost of one sampler tick by running it at 1 ms.

    PYTHONPATH=src python benchmarks/sampler_cpu.py --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from ws_guard import Guard, load


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def cpu_for(kind: str, seconds: float, interval: float | None) -> tuple[float, int]:
    """CPU seconds used while idling *seconds*, and how many samples were taken."""
    loop = new_loop(kind)
    lag = load.EventLoopLag(limit=0.25, interval=interval or 0.05, window=max(1.0, interval or 0))
    samples = 0

    async def main() -> None:
        nonlocal samples
        guard = Guard(load=[lag] if interval else [])
        await guard.startup()
        original: Callable[[float, float], bool] = lag.record

        def counting(now: float, value: float) -> bool:
            nonlocal samples
            samples += 1
            return original(now, value)

        lag.record = counting  # type: ignore[method-assign]
        await asyncio.sleep(seconds)
        await guard.shutdown()

    try:
        start = time.process_time()
        loop.run_until_complete(main())
        return time.process_time() - start, samples
    finally:
        loop.close()


def bare_timer_cpu(kind: str, seconds: float, interval: float) -> float:
    """CPU of a do-nothing timer chain: the price of waking the loop at all."""
    loop = new_loop(kind)

    def tick() -> None:
        loop.call_later(interval, tick)

    loop.call_later(interval, tick)
    try:
        start = time.process_time()
        loop.run_until_complete(asyncio.sleep(seconds))
        return time.process_time() - start
    finally:
        loop.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="idle time per run")
    parser.add_argument("--loops", default="asyncio,uvloop", help="comma-separated loop kinds")
    parser.add_argument("--json", help="write the results here as JSON")
    args = parser.parse_args()
    results: list[dict[str, Any]] = []
    for kind in args.loops.split(","):
        cpu_for(kind, 0.2, 0.05)  # warm-up: imports and first-use costs are not the sampler's
        base, _ = cpu_for(kind, args.seconds, None)
        with_sampler, samples = cpu_for(kind, args.seconds, 0.05)
        tick_cpu, ticks = cpu_for(kind, min(args.seconds, 2.0), 0.001)
        idle_base, _ = cpu_for(kind, min(args.seconds, 2.0), None)
        per_tick = (tick_cpu - idle_base) / max(ticks, 1)
        bare = bare_timer_cpu(kind, args.seconds, 0.05)
        row = {
            "loop": kind,
            "seconds": args.seconds,
            "cpu_without_s": round(base, 4),
            "cpu_with_sampler_s": round(with_sampler, 4),
            "samples": samples,
            "overhead_percent_of_one_core": round(100 * (with_sampler - base) / args.seconds, 3),
            "bare_50ms_timer_percent": round(100 * (bare - base) / args.seconds, 3),
            "cpu_per_tick_us": round(per_tick * 1e6, 1),
            "estimated_percent_at_50ms": round(100 * per_tick * 20, 3),
        }
        results.append(row)
        print(json.dumps(row))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
