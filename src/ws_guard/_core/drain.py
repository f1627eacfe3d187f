"""Graceful drain: close open connections with 1012, spread over a window.

Closing every connection at once (what uvicorn does on shutdown) brings every
client back in the same second, onto whichever instances are left. A drain
plans one close per connection at ``window * i / n`` and hands each client
its own jittered ``retry-after``. The plan runs on the guard's scheduler: one
heap entry re-armed per wave, not a task per connection. While it runs, new
handshakes get the same 1012 (accept-then-close, or 503 in HTTP mode).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import anyio

from ws_guard._core.decisions import Close
from ws_guard._core.states import AUTHENTICATING, CONNECTING, OPEN
from ws_guard._validate import check_non_negative, check_positive
from ws_guard.codes import GOING_AWAY, REASON_GOING_AWAY, REASON_RESTARTING, SERVICE_RESTART
from ws_guard.errors import ConfigurationError

if TYPE_CHECKING:
    from ws_guard._core.scheduler import Deadline
    from ws_guard.rules.context import RuleContext
    from ws_guard.rules.runtime import Runtime

#: Codes a drain may close with, and the reason slug each one carries.
DRAIN_REASONS = {SERVICE_RESTART: REASON_RESTARTING, GOING_AWAY: REASON_GOING_AWAY}
#: Admitted connections still to close: open (or waiting for a first-message
#: token), or admitted and not yet accepted.
_CLOSABLE = (OPEN, AUTHENTICATING, CONNECTING)


class Drain:
    """One drain of one guard, from the first wave to the last close."""

    def __init__(
        self, guard: Runtime, window: float, code: int, retry_after: float, grace: float
    ) -> None:
        if code not in DRAIN_REASONS:
            raise ConfigurationError(
                f"drain code must be one of {sorted(DRAIN_REASONS)}, not {code!r}"
            )
        self.guard = guard
        self.window = check_non_negative("drain window", window)
        self.retry_after = check_positive("drain retry_after", retry_after)
        self.grace = check_non_negative("drain grace", grace)
        self.code = code
        self.reason = DRAIN_REASONS[code]
        self.started_at = 0.0
        self.closed = 0
        self._plan: deque[tuple[float, RuleContext]] = deque()
        self._planned: set[RuleContext] = set()
        self._deadline: Deadline | None = None
        self._done = anyio.Event()

    def close_for_one(self) -> Close:
        """The decision for one client: its own hint in ``[r, 2r)`` seconds."""
        hint = self.retry_after * (1.0 + self.guard.random.random())
        return Close(self.code, self.reason, self.reason, hint, jittered=True)

    def start(self) -> None:
        """Plan the waves: connection *i* of *n* closes at ``window * i / n``."""
        scheduler = self.guard.scheduler
        self.started_at = now = scheduler.now()
        connections = [conn for conn in self.guard.live_connections if conn.state in _CLOSABLE]
        self.guard.random.shuffle(connections)  # no order leaks (age, address) into waves
        count = len(connections)
        self._planned = set(connections)
        self._plan = deque(
            (now + self.window * index / count, conn) for index, conn in enumerate(connections)
        )
        self._tick()

    def _tick(self) -> None:
        self._deadline = None
        scheduler = self.guard.scheduler
        now = scheduler.now()
        plan = self._plan
        while plan and plan[0][0] <= now:
            self._close(plan.popleft()[1])
        if plan:
            self._deadline = scheduler.call_at(plan[0][0], self._tick)
            return
        # Handshakes that were past the drain check when it began may have
        # been admitted since: close them too, then the plan is complete.
        for conn in list(self.guard.live_connections):
            if conn.state in _CLOSABLE and conn not in self._planned:
                self._planned.add(conn)
                self._close(conn)
        self._done.set()

    def admitted(self, conn: RuleContext) -> None:
        """A handshake admitted after the last wave: it missed the plan, so close it now."""
        if self._done.is_set() and conn not in self._planned:
            self._planned.add(conn)
            self._close(conn)

    def _close(self, conn: RuleContext) -> None:
        if conn.state in _CLOSABLE:
            self.closed += 1
            conn.close_soon(self.close_for_one())

    def cancel(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._done.set()

    def flush(self) -> None:
        """Close everything still planned now (the waves fell behind)."""
        if self._deadline is not None:
            self._deadline.cancel()
        self._plan = deque((self.started_at, conn) for _, conn in self._plan)
        self._tick()

    async def wait(self) -> None:
        """Until every wave has run and the closed connections have finished.

        Bounded in real time: the waves get ``window`` seconds (plus
        ``grace``), then whatever is left is closed at once; the closed
        connections get ``grace`` more seconds to finish, so neither a late
        scheduler nor a handler that ignores its disconnect can hold a
        shutdown forever.
        """
        with anyio.move_on_after(self.window + self.grace) as waves:
            await self._done.wait()
        if waves.cancelled_caught:
            self.flush()
        give_up = anyio.current_time() + self.grace
        while any(conn in self.guard.live_connections for conn in self._planned):
            if anyio.current_time() >= give_up:
                return
            await anyio.sleep(0.02)
