"""Revoked token ids and subjects, each until a time; swept so nothing grows without bound.

``guard.revoke()`` writes here and the auth rule reads here once at the
handshake (or first-message token) and once per in-band refresh, never per
message. Times are on the guard's clock (``scheduler.clock``: the injected
clock, else ``time.monotonic``), so tests move them without sleeping.

Memory storage, one process. Each entry expires at its ``until``; expired
entries are dropped by a sweep that runs at most once per
:data:`SWEEP_INTERVAL` seconds, or sooner when the map doubled since the
last sweep, so the maps hold at most about twice the revocations in force.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

#: Seconds (guard clock) between two sweeps of expired revocations.
SWEEP_INTERVAL = 30.0


class Revocations:
    """Revoked ``jti`` values and subjects (``sub``), each with its expiry (guard clock)."""

    __slots__ = ("_clock", "_jtis", "_next_sweep", "_subjects", "_swept_size", "remote")

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        #: With a Redis storage, the shared check a handshake makes after this
        #: process's own: True/False, or ``None`` when Redis failed.
        self.remote: Callable[[object, object], Awaitable[bool | None]] | None = None
        self._jtis: dict[str, float] = {}
        self._subjects: dict[str, float] = {}
        self._next_sweep = float("-inf")
        self._swept_size = 0

    def add(self, *, jti: str | None, subject: str | None, expires: float) -> None:
        """Revoke *jti* and/or *subject* until *expires* (guard clock); a later one wins."""
        for store, value in ((self._jtis, jti), (self._subjects, subject)):
            if value is not None and store.get(value, float("-inf")) < expires:
                store[value] = expires
        self._maybe_sweep(self._clock())

    def revoked(self, jti: object, subject: object) -> bool:
        """Whether a token with this ``jti`` (any claim value) or ``sub`` is revoked now.

        A dict lookup each; claims that are not strings never match.
        """
        now = self._clock()
        self._maybe_sweep(now)
        if isinstance(jti, str) and self._jtis.get(jti, float("-inf")) > now:
            return True
        return isinstance(subject, str) and self._subjects.get(subject, float("-inf")) > now

    def in_force(self) -> dict[str, dict[str, float]]:
        """``{"jti": {value: expires}, "subject": {...}}`` of the revocations in force now."""
        now = self._clock()
        return {
            "jti": {k: v for k, v in self._jtis.items() if v > now},
            "subject": {k: v for k, v in self._subjects.items() if v > now},
        }

    def count(self) -> int:
        """How many revocations are in force now (for the metrics; sweeps first)."""
        now = self._clock()
        self.sweep(now)
        return len(self._jtis) + len(self._subjects)

    def _maybe_sweep(self, now: float) -> None:
        size = len(self._jtis) + len(self._subjects)
        if now >= self._next_sweep or size > 2 * max(self._swept_size, 64):
            self.sweep(now)

    def sweep(self, now: float) -> None:
        """Drop every expired entry; O(entries), at most once per interval or doubling."""
        for store in (self._jtis, self._subjects):
            for value in [k for k, expires in store.items() if expires <= now]:
                del store[value]
        self._next_sweep = now + SWEEP_INTERVAL
        self._swept_size = len(self._jtis) + len(self._subjects)
