"""Bans in force: a key refused until a time, by the ``AutoBan`` rule that banned it.

``rules.AutoBan`` writes here when a key reaches its count of policy closes
and reads here once per handshake; ``guard.bans()`` lists and
``guard.unban(key)`` lifts. Times are on the guard's clock
(``scheduler.clock``), so tests move them without sleeping. Memory, one
process; expired bans are swept at most every :data:`SWEEP_INTERVAL`
seconds, or when the map doubled since the last sweep.

The map is bounded, like the strikes that lead to it: at most
:attr:`Bans.max_bans` bans (the sum of the ``AutoBan`` rules' ``max_keys``;
:data:`DEFAULT_MAX_BANS` for a guard without one, which holds only bans heard
from other processes). A ban over the bound drops the oldest
(the first to end, since a rule's bans all last as long), logged once: a
client with many addresses (an IPv6 network holds 2**16 /64s per /48)
would otherwise grow the map by one entry per address struck out, for as
long as a ban lasts (up to a week).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger("ws_guard")

#: Seconds (guard clock) between two sweeps of expired bans.
SWEEP_INTERVAL = 30.0
#: Bans a guard without an ``AutoBan`` holds at most (heard from other
#: processes): ``AutoBan``'s own default ``max_keys``.
DEFAULT_MAX_BANS = 100_000
#: The longest ban, in seconds (a week): ``AutoBan(ban=...)`` and a ban heard
#: from another process alike.
MAX_BAN = 7 * 86_400.0


@dataclass(frozen=True, slots=True)
class BanInfo:
    """One ban in force, as ``guard.bans()`` lists it.

    ``key`` is what the rule's key function gave (an address for
    ``rules.by_ip``); ``rule`` the banning rule's label; ``until`` wall-clock
    seconds (``time.time()`` base) when it ends; ``shadow`` True for a rule in
    shadow mode (the key would be banned, and is admitted).
    """

    key: str
    rule: str
    until: float
    shadow: bool


class Bans:
    """``(rule label, key) -> (ends at on the guard clock, shadow)``."""

    __slots__ = (
        "_bans",
        "_clock",
        "_full_logged",
        "_next_sweep",
        "_reserved",
        "_swept_size",
        "announce",
        "announce_strike",
        "max_bans",
        "strikers",
    )

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        #: Called with ``(rule, key, seconds, shadow)`` for each new ban made
        #: here (not one heard from another process): the guard fans it out.
        self.announce: Callable[[str, str, float, bool], None] | None = None
        #: Called with ``(rule, key)`` for each policy close counted here, so
        #: every process counts the strikes of all (``None`` in one process).
        self.announce_strike: Callable[[str, str], None] | None = None
        #: rule label -> what counts a strike heard from another process
        #: (each ``AutoBan`` adds itself at startup).
        self.strikers: dict[str, Callable[[str], None]] = {}
        self._bans: dict[tuple[str, str], tuple[float, bool]] = {}
        self._next_sweep = float("-inf")
        self._swept_size = 0
        #: Bans held at most; the oldest goes first past it (see :meth:`reserve`).
        self.max_bans = DEFAULT_MAX_BANS
        self._reserved = 0
        self._full_logged = False

    def reserve(self, count: int) -> None:
        """Room for *count* more bans (an ``AutoBan``'s ``max_keys``, when it is bound)."""
        self._reserved += count
        self.max_bans = self._reserved

    def ban(self, rule: str, key: str, ends: float, *, shadow: bool, local: bool = True) -> None:
        """Ban *key* for *rule* until *ends* (guard clock); a later end wins.

        *local*: decided in this process, so announced to the others.
        """
        now = self._clock()
        current = self._bans.get((rule, key))
        if current is None and len(self._bans) >= self.max_bans:
            self._drop_oldest()
        if current is None or current[0] < ends:
            self._bans[(rule, key)] = (ends, shadow)
        self._maybe_sweep(now)
        if local and self.announce is not None:
            self.announce(rule, key, ends - now, shadow)

    def _drop_oldest(self) -> None:
        """Make room: drop the ban made first (dicts keep insertion order), logged once."""
        del self._bans[next(iter(self._bans))]
        if not self._full_logged:
            self._full_logged = True
            logger.warning(
                "ws_guard ban store full (%d bans): the oldest bans are dropped early; "
                "raise AutoBan(max_keys=...) if this many clients strike out",
                self.max_bans,
            )

    def remaining(self, rule: str, key: str) -> float | None:
        """Seconds left on *rule*'s ban of *key*, ``None`` when it is not banned."""
        entry = self._bans.get((rule, key))
        if entry is None:
            return None
        left = entry[0] - self._clock()
        return left if left > 0 else None

    def lift(self, key: str) -> int:
        """Lift every rule's ban of *key*; how many were in force."""
        now = self._clock()
        lifted = 0
        for entry in [entry for entry in self._bans if entry[1] == key]:
            ends, _ = self._bans.pop(entry)
            lifted += ends > now
        return lifted

    def listing(self) -> list[BanInfo]:
        """The bans in force now, soonest end first (``until`` in wall-clock seconds)."""
        now = self._clock()
        offset = time.time() - now
        found = [
            BanInfo(key, rule, ends + offset, shadow)
            for (rule, key), (ends, shadow) in self._bans.items()
            if ends > now
        ]
        found.sort(key=lambda ban: (ban.until, ban.rule, ban.key))
        return found

    def count(self) -> int:
        """Bans in force now, shadow ones included (for the metrics; sweeps first)."""
        self.sweep(self._clock())
        return len(self._bans)

    def _maybe_sweep(self, now: float) -> None:
        if now >= self._next_sweep or len(self._bans) > 2 * max(self._swept_size, 64):
            self.sweep(now)

    def sweep(self, now: float) -> None:
        """Drop every expired ban: O(bans), at most once per interval or doubling."""
        for entry in [entry for entry, (ends, _) in self._bans.items() if ends <= now]:
            del self._bans[entry]
        self._next_sweep = now + SWEEP_INTERVAL
        self._swept_size = len(self._bans)
