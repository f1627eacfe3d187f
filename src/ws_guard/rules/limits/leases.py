"""Message-rate windows for shared keys: in memory, or leased from Redis.

A message check must be plain arithmetic, but a limit shared across
processes lives in Redis, 70-150 µs away. So a process takes quota from a
Redis fixed-window counter in *leases* and spends it locally:

* A lease request is ``INCRBY want`` on the window's counter; the process is
  granted ``min(want, limit - count_before)``. Redis never grants more than
  ``limit`` per window in total, whatever the number of processes.
* A message spends local allowance. When allowance falls to half a lease, the
  next lease is requested in the background (one task per key at a time,
  never one per message), so in steady state no message waits or goes unpaid.
* With no allowance and no answer yet (first message of a window, or a burst
  faster than a round trip), the message is admitted on *debt*: it is
  charged in the next request. Once Redis answers that the window is spent,
  the process denies until the window ends. Overshoot is therefore bounded
  by the messages a process admits on debt while its exhausting request is
  in flight (see docs/rate-limits.md), and never more than ``limit`` per
  process per window, because each process also counts its own messages.

Leases start at one message and double with each request in a window, up to
``max_lease``, so idle keys park little quota and busy keys few requests.
Redis' ``PTTL`` sets the window's end, so hosts need no synchronised clocks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ws_guard.rules.runtime import Runtime

#: ``take`` result meaning "storage is down and the policy denies".
STORAGE_DOWN = -1.0

#: INCRBY the window's counter; the first increment of a window sets its expiry.
LEASE_SCRIPT = """
local count = redis.call('INCRBY', KEYS[1], ARGV[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  ttl = tonumber(ARGV[2])
end
return {count, ttl}
"""

#: Read a window's counter without opening a window.
PEEK_SCRIPT = """
local count = redis.call('GET', KEYS[1])
if not count then return {0, 0} end
return {tonumber(count), redis.call('PTTL', KEYS[1])}
"""

Script = Callable[[Sequence[str], Sequence[Any]], Awaitable[Any]]


class CountedWindow:
    """A fixed window opened by the first message, counted in this process."""

    __slots__ = ("count", "end", "limit", "window")

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self.end = float("-inf")
        self.count = 0

    def alive(self, now: float) -> bool:
        return now < self.end

    def take(self, t: float) -> float | None:
        """``None`` admits; a number denies and says when the window frees."""
        if t >= self.end:
            self.end = t + self.window
            self.count = 1
            return None
        if self.count < self.limit:
            self.count += 1
            return None
        return self.end - t


class LeaseBook:
    """What every leased window of one rule shares: scripts, policy, clock."""

    __slots__ = ("fail_open", "guard", "lease", "now", "peek", "retry", "tasks")

    def __init__(self, guard: Runtime, retry: float = 1.0) -> None:
        storage = guard.storage
        self.guard = guard
        self.now = guard.scheduler.clock
        self.lease: Script = storage.script(LEASE_SCRIPT)
        self.peek: Script = storage.script(PEEK_SCRIPT)
        self.retry = retry
        self.fail_open = guard.on_storage_error == "allow"
        self.tasks: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        tasks, self.tasks = self.tasks, set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class LeasedWindow:
    """One key's window on Redis, spent locally from leases."""

    __slots__ = (
        "allowance",
        "book",
        "debt",
        "end",
        "epoch",
        "exhausted",
        "failed_until",
        "key",
        "lease",
        "limit",
        "max_lease",
        "task",
        "used",
        "window",
    )

    def __init__(
        self, book: LeaseBook, key: str, limit: int, window: float, max_lease: int
    ) -> None:
        self.book = book
        self.key = key
        self.limit = limit
        self.window = window
        self.max_lease = max_lease
        self.end = float("-inf")
        self.epoch = 0
        self.allowance = 0
        self.debt = 0
        self.used = 0
        self.lease = 1
        self.exhausted = False
        self.failed_until = float("-inf")
        self.task: asyncio.Task[None] | None = None

    def alive(self, now: float) -> bool:
        return now < self.end or self.task is not None

    def _roll(self, t: float) -> None:
        # The local end is provisional until Redis reports the window's PTTL.
        self.epoch += 1
        self.end = t + self.window
        self.allowance = self.debt = self.used = 0
        self.lease = 1
        self.exhausted = False

    def take(self, t: float) -> float | None:
        """Admit (``None``), deny (seconds until the window frees) or STORAGE_DOWN."""
        if t >= self.end:
            self._roll(t)
        if self.used >= self.limit:  # this process alone never exceeds the limit
            return self.end - t
        if self.allowance > 0:
            self.allowance -= 1
            self.used += 1
            if (
                self.allowance <= self.lease >> 1
                and self.task is None
                and not self.exhausted
                and t >= self.failed_until
            ):
                self._request(t)
            return None
        if self.exhausted:
            return self.end - t
        if t < self.failed_until:  # storage failed a moment ago: the policy decides
            if self.book.fail_open:
                self.used += 1
                return None
            return STORAGE_DOWN
        self.debt += 1
        self.used += 1
        if self.task is None:
            self._request(t)
        return None

    def _request(self, t: float) -> None:
        want = self.debt + self.lease
        task = asyncio.get_running_loop().create_task(self._lease(self.epoch, want, self.debt, t))
        self.task = task
        self.book.tasks.add(task)
        task.add_done_callback(self.book.tasks.discard)

    async def _lease(self, epoch: int, want: int, debt: int, started: float) -> None:
        book = self.book
        try:
            count, ttl = await book.lease([self.key], [want, int(self.window * 1000)])
        except book.guard.storage.errors as exc:
            self.task = None
            self._failed(exc)
            return
        except asyncio.CancelledError:
            self.task = None
            raise
        self.task = None
        self.failed_until = float("-inf")
        if epoch == self.epoch:
            self.end = started + int(ttl) / 1000.0
            granted = max(0, min(want, self.limit - (int(count) - want)))
            self.debt -= debt
            self.allowance += max(0, granted - debt)
            if granted < want:
                self.exhausted = True
            else:
                self.lease = min(self.lease * 2, self.max_lease)
        if self.debt > 0 and not self.exhausted:
            self._request(book.now())

    def _failed(self, exc: BaseException) -> None:
        self.book.guard.report_storage_error(exc, "message rate lease")
        self.failed_until = self.book.now() + self.book.retry
        self.debt = 0

    async def prime(self) -> bool:
        """At a handshake, learn whether the key's window is already spent.

        Returns False when storage failed (the caller applies the policy).
        Costs one round trip, and only when this process knows nothing about
        the key's current window or storage failed a moment ago: a success
        ends the failure pause, so a new connection notices at once that
        Redis is back.
        """
        book = self.book
        t = book.now()
        if self.task is not None or (t < self.end and t >= self.failed_until):
            return True
        epoch = self.epoch
        try:
            count, ttl = await book.peek([self.key], [])
        except book.guard.storage.errors as exc:
            self._failed(exc)
            return False
        self.failed_until = float("-inf")  # storage is back: messages may lease again
        if epoch == self.epoch and book.now() >= self.end and int(count) >= self.limit:
            self._roll(t)
            self.end = t + max(0, int(ttl)) / 1000.0
            self.exhausted = True
        return True
