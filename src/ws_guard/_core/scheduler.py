"""One deadline heap and one timer handle for every connection.

Token expiry, first-message timeouts and drain waves all need "do this at
time T". A task or timer per connection would cost memory and wake-ups for
10 000 idle sockets; a heap keeps one timer armed for the earliest deadline
only, so an idle process stays idle. On asyncio the timer is a
``loop.call_at`` handle; on trio (no call_at there) it is one detached task
that sleeps until the deadline (see _core/tasks.py). Both count time on
``time.monotonic``, the clock asyncio's ``loop.time()`` reads.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections.abc import Callable

import anyio

from ws_guard._core.tasks import Job, spawn

logger = logging.getLogger("ws_guard")


class Deadline:
    """A scheduled callback; :meth:`cancel` it when its connection ends.

    Deadlines order themselves (by time, then by scheduling order), so the
    heap holds them directly rather than in a tuple per entry.
    """

    __slots__ = ("_scheduler", "callback", "cancelled", "seq", "when")

    def __init__(
        self, scheduler: Scheduler, when: float, seq: int, callback: Callable[[], None]
    ) -> None:
        self._scheduler = scheduler
        self.when = when
        self.seq = seq
        self.callback = callback
        self.cancelled = False

    def __lt__(self, other: Deadline) -> bool:
        if self.when == other.when:
            return self.seq < other.seq
        return self.when < other.when

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self._scheduler._forget()


class Scheduler:
    """A min-heap of deadlines driven by a single event-loop timer.

    With an injected *clock* (a :class:`ManualClock`), no loop timer is
    armed: tests advance time and call :meth:`run_due` themselves, so
    deadlines are exact without sleeping.
    """

    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self._manual = clock is not None
        self._clock = clock
        #: A cheap clock for per-message arithmetic (rate windows): the injected
        #: clock, else ``time.monotonic``, the time base of the event loop's
        #: ``time()``. A plain call, a quarter of :meth:`now`'s cost.
        self.clock: Callable[[], float] = clock if clock is not None else time.monotonic
        self._heap: list[Deadline] = []
        self._seq = itertools.count()
        self._live = 0
        self._timer: asyncio.TimerHandle | Job[None] | None = None
        self._timer_when = float("inf")

    def now(self) -> float:
        if self._clock is not None:
            return self._clock()
        try:
            return asyncio.get_running_loop().time()
        except RuntimeError:  # not on asyncio (trio): the same clock, read directly
            return time.monotonic()

    @property
    def manual(self) -> bool:
        """True with an injected clock: nothing runs unless a test calls run_due."""
        return self._manual

    def __len__(self) -> int:
        """Deadlines still pending (cancelled ones excluded)."""
        return self._live

    @property
    def timer_armed(self) -> bool:
        return self._timer is not None

    def call_at(self, when: float, callback: Callable[[], None]) -> Deadline:
        """Run *callback* (sync, must not raise) at clock time *when*."""
        deadline = Deadline(self, when, next(self._seq), callback)
        heapq.heappush(self._heap, deadline)
        self._live += 1
        self._arm()
        return deadline

    def call_later(self, delay: float, callback: Callable[[], None]) -> Deadline:
        return self.call_at(self.now() + delay, callback)

    def run_due(self, now: float | None = None) -> int:
        """Fire every deadline at or before *now*; returns how many fired."""
        if now is None:
            now = self.now()
        fired = 0
        try:
            # Re-read self._heap each turn: a callback may cancel deadlines
            # and so make _forget rebuild the heap as a new list.
            while self._heap and self._heap[0].when <= now:
                deadline = heapq.heappop(self._heap)
                if deadline.cancelled:
                    continue
                deadline.cancelled = True
                self._live -= 1
                fired += 1
                deadline.callback()
        finally:
            # Re-arm even when a callback raised, so one broken callback
            # cannot stall every later deadline of every connection.
            self._arm()
        return fired

    def close(self) -> None:
        """Drop the timer and every pending deadline (guard shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_when = float("inf")
        for deadline in self._heap:
            deadline.cancelled = True
        self._heap.clear()
        self._live = 0

    def _forget(self) -> None:
        self._live -= 1
        # Cancelled entries stay in the heap until popped; rebuild when they
        # dominate, so cancelled deadlines cannot accumulate without bound.
        if len(self._heap) > 64 and self._live < len(self._heap) // 2:
            self._heap = [entry for entry in self._heap if not entry.cancelled]
            heapq.heapify(self._heap)
        if self._live == 0:
            self._heap.clear()
            self._disarm()

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_when = float("inf")

    def _arm(self) -> None:
        heap = self._heap
        while heap and heap[0].cancelled:
            heapq.heappop(heap)
        if not heap:
            self._disarm()
            return
        if self._manual:
            return
        when = heap[0].when
        if self._timer is not None and self._timer_when <= when:
            return
        self._disarm()
        self._timer_when = when
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on asyncio (trio): a task that sleeps until *when*
            self._timer = spawn(self._sleep_until(when))
            return
        self._timer = loop.call_at(when, self._fire)

    async def _sleep_until(self, when: float) -> None:
        await anyio.sleep(max(0.0, when - time.monotonic()))
        try:
            self._fire()
        except Exception:  # a callback broke its contract; asyncio would log it too
            logger.exception("ws_guard deadline callback failed")

    def _fire(self) -> None:
        self._timer = None
        self._timer_when = float("inf")
        self.run_due()
