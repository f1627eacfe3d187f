"""Event-loop lag: a sleep-drift sampler, a max-over-window gauge, hysteresis.

The sampler asks the loop to wake it every ``interval`` seconds and records
how late the wake-up was. One ``loop.call_at`` handle re-arms itself: no
task, no future, so an idle process pays for twenty callbacks a second.

The gauge is the **maximum** lag over a ``window``, not a mean: an EWMA
spreads a single 150 ms stall over many samples and never reaches the limit.
It trips when a sample reaches ``limit`` and clears only after the windowed
maximum has stayed below ``clear_below`` for ``hold`` seconds, so a server
that recovers for a moment does not flap between shedding and admitting.

A handshake that arrives right after a stall can run before the sampler's
own late wake-up; the check therefore also counts how overdue the pending
wake-up is, so the stall is seen by the very first handshake after it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING

import anyio

from ws_guard._core.tasks import Job, spawn
from ws_guard._validate import check_seconds
from ws_guard.errors import ConfigurationError
from ws_guard.load.base import LoadGauge
from ws_guard.load.hysteresis import Hysteresis, check_band
from ws_guard.metrics.snapshot import EVENT_LOOP_LAG_GAUGE

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from ws_guard.load.base import GaugeOptions
    from ws_guard.rules.runtime import Runtime


class LagWindow:
    """The maximum of ``(time, lag)`` samples over a sliding window.

    A monotonic deque keeps the maximum at the front, O(1) per sample; the
    current maximum is a plain attribute, so metrics may read it from any
    thread while the loop keeps sampling.
    """

    __slots__ = ("_samples", "maximum", "window")

    def __init__(self, window: float) -> None:
        self.window = window
        self._samples: deque[tuple[float, float]] = deque()
        self.maximum = 0.0

    def add(self, now: float, lag: float) -> float:
        samples = self._samples
        while samples and samples[-1][1] <= lag:
            samples.pop()
        samples.append((now, lag))
        horizon = now - self.window
        while samples[0][0] <= horizon:
            samples.popleft()
        self.maximum = samples[0][1]
        return self.maximum

    def clear(self) -> None:
        self._samples.clear()
        self.maximum = 0.0


class EventLoopLag(LoadGauge):
    """Shed with 1013 while the event loop runs late.

    ``limit`` (seconds) trips the gauge; it clears once the lag has stayed
    below ``clear_below`` (default ``limit / 2``) for ``hold`` seconds.
    Lag alone misses sustained load that keeps the loop just under the
    limit: pair it with :class:`ConnectionCount`.
    """

    def __init__(
        self,
        limit: float = 0.25,
        *,
        clear_below: float | None = None,
        hold: float = 3.0,
        window: float = 1.0,
        interval: float = 0.05,
        name: str = EVENT_LOOP_LAG_GAUGE,
        **options: Unpack[GaugeOptions],
    ) -> None:
        # Bounds: ws_guard's and browsers' pings time out long before 10 s of
        # lag; a window past a minute would shed long after recovery.
        limit = check_seconds("EventLoopLag limit", limit, maximum=10.0)
        clear, self.hold = check_band(
            "EventLoopLag", limit, clear_below, hold, default_clear=limit / 2
        )
        self.window = check_seconds("EventLoopLag window", window, maximum=60.0)
        self.interval = check_seconds("EventLoopLag interval", interval, maximum=10.0)
        if self.interval > self.window:
            raise ConfigurationError(
                f"interval must not exceed the window ({window!r}), not {interval!r}"
            )
        super().__init__(limit, name=name, **options)
        self.clear_below = clear
        # A sample stays in the window for ``window`` seconds; clearing needs
        # the window maximum below ``clear_below`` for ``hold`` more.
        self._state = Hysteresis(limit, clear, self.window + self.hold)
        self._window = LagWindow(self.window)
        self._loop: asyncio.AbstractEventLoop | None = None
        #: A loop timer on asyncio; a detached sleeping task elsewhere (trio).
        self._handle: asyncio.TimerHandle | Job[None] | None = None
        self._due = float("inf")

    # -- sampling ----------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._handle is not None

    async def startup(self, guard: Runtime) -> None:
        await super().startup(guard)
        if self._handle is None and not guard.scheduler.manual:
            self._state.reset()  # times from a previous loop mean nothing in this one
            self._window.clear()
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # not asyncio (trio): a task that sleeps and measures
                # Due from now, as loop.call_at arms it: a stall before the task's
                # first turn is then overdue for observe(), not unseen.
                self._due = time.monotonic() + self.interval
                self._handle = spawn(self._probe())
                return
            self._loop = loop
            self._arm(loop, loop.time())

    async def shutdown(self, guard: Runtime) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._loop = None
        self._due = float("inf")
        await super().shutdown(guard)

    async def _probe(self) -> None:
        """The sampler off asyncio: the same drift, on the scheduler's clock (monotonic).

        ``_due`` is set by startup before the first turn, then after each sample.
        """
        while True:
            await anyio.sleep(max(0.0, self._due - time.monotonic()))
            now = time.monotonic()
            lag = now - self._due
            self.record(now, lag if lag > 0.0 else 0.0)
            self._due = now + self.interval

    def _arm(self, loop: asyncio.AbstractEventLoop, now: float) -> None:
        self._due = now + self.interval
        self._handle = loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        loop = self._loop
        if loop is None:  # stopped between the wake-up and this call
            return
        now = loop.time()
        lag = now - self._due
        self.record(now, lag if lag > 0.0 else 0.0)
        self._arm(loop, now)

    def record(self, now: float, lag: float) -> bool:
        """Feed one lag sample taken at *now*; returns whether the gauge is tripped.

        The sampler calls this; tests and custom samplers may call it directly
        (with an injected guard clock the sampler does not run).
        """
        self._window.add(now, lag)
        return self._state.observe(now, lag)

    # -- state ---------------------------------------------------------------------
    def value(self) -> float:
        """The largest lag sampled within the last ``window`` seconds."""
        return self._window.maximum

    def tripped(self) -> bool:
        return self._state.tripped

    def observe(self, now: float) -> bool:
        overdue = now - self._due
        if overdue > 0.0:  # the loop is late right now; the sampler has not run yet
            return self._state.observe(now, overdue)
        return self._state.poll(now)

    @property
    def tripped_since(self) -> float | None:
        return self._state.tripped_since
