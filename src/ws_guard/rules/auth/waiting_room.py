"""Connections admitted without a token, waiting for a first message: counted and bounded.

A tokenless socket costs the server as much as a real one and proves
nothing, so with ``rules.from_first_message`` these are bounded on their
own: per client address (``rules.by_ip`` keys, the guard's ``ipv6_prefix``
included) and in total, per process. A connection counts from admission
until its first message arrives, its timeout fires, or it ends.
"""

from __future__ import annotations

import enum


class Full(enum.Enum):
    """Which bound refused a connection."""

    KEY = "key"  # this client holds too many: its own doing (1008)
    TOTAL = "total"  # the process holds too many: server state (1013)


class WaitingRoom:
    """Per-key and total counts of waiting connections, for one rule."""

    __slots__ = ("by_key", "count", "max_per_key", "max_total")

    def __init__(self, max_total: int, max_per_key: int) -> None:
        self.max_total = max_total
        self.max_per_key = max_per_key
        self.count = 0
        #: Only keys with a waiting connection: emptied keys are deleted.
        self.by_key: dict[str, int] = {}

    def full(self, key: str) -> Full | None:
        """The bound a new connection under *key* would pass, or ``None``."""
        if self.by_key.get(key, 0) >= self.max_per_key:
            return Full.KEY
        if self.count >= self.max_total:
            return Full.TOTAL
        return None

    def enter(self, key: str) -> None:
        self.count += 1
        self.by_key[key] = self.by_key.get(key, 0) + 1

    def leave(self, key: str) -> None:
        self.count -= 1
        left = self.by_key[key] - 1
        if left:
            self.by_key[key] = left
        else:
            del self.by_key[key]
