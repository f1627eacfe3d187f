"""The windows of :mod:`ws_guard.rules.limits.leases`, spent by a cost (bytes) instead of one.

The same fixed windows opened by the first message, and on Redis the same
leases (``INCRBY`` of the cost, debt while a lease is in flight): a byte is
what a message is to ``MessageRate``. What the cost adds is exactness at
the limit: a message is admitted only when its whole cost still fits, so a
window admits exactly ``limit`` bytes, and a refused message counts nothing.
"""

from __future__ import annotations

from ws_guard.rules.limits.leases import STORAGE_DOWN, CountedWindow, LeasedWindow
from ws_guard.types import Message


def payload_bytes(message: Message) -> int:
    """A ``websocket.receive`` message's size: text in UTF-8 bytes, binary in bytes.

    ASCII text is its length (``str.isascii`` reads a flag CPython keeps on
    the string, no scan); other text is encoded once. ``surrogatepass``
    counts a lone surrogate as its 3 bytes instead of raising, as
    ``MaxMessageSize`` does. A message with neither payload costs 0.
    """
    text = message.get("text")
    if text is not None:
        return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
    data = message.get("bytes")
    return 0 if data is None else len(data)


class CostWindow(CountedWindow):
    """A :class:`CountedWindow` in which a message counts its *cost*."""

    __slots__ = ()

    def take(self, t: float, cost: int = 1) -> float | None:
        """``None`` admits *cost* more; a number refuses and says when the window frees."""
        if t >= self.end:
            self.end = t + self.window
            self.count = 0
        count = self.count + cost
        if count > self.limit:
            return self.end - t
        self.count = count
        return None


class LeasedCostWindow(LeasedWindow):
    """A :class:`LeasedWindow` in which a message spends its *cost* of the leased quota.

    A cost larger than the allowance spends the allowance and owes the rest
    as debt, charged in the next lease request, exactly as a message owes
    one when no allowance is left.
    """

    __slots__ = ()

    def take(self, t: float, cost: int = 1) -> float | None:
        """Admit (``None``), refuse (seconds until the window frees) or ``STORAGE_DOWN``."""
        if t >= self.end:
            self._roll(t)
        if self.used + cost > self.limit:  # this process alone never exceeds the limit
            return self.end - t
        allowance = self.allowance
        if allowance >= cost:
            self.allowance = allowance - cost
            self.used += cost
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
                self.allowance = 0
                self.used += cost
                return None
            return STORAGE_DOWN
        self.debt += cost - allowance
        self.allowance = 0
        self.used += cost
        if self.task is None:
            self._request(t)
        return None
