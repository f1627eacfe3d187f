"""Trip high, clear low and late: the state machine every sampled gauge uses.

A single threshold flaps: a server that sheds recovers, is flooded again,
sheds again. So a gauge trips when a reading reaches ``limit`` and clears
only after no reading has reached the lower ``clear_below`` for ``hold``
seconds. Time is passed in, never read here, so tests drive it exactly.
"""

from __future__ import annotations

from ws_guard._validate import check_clear_below, check_seconds

#: The longest ``hold`` a gauge takes (seconds): a longer one would keep
#: shedding long after the server recovered.
MAX_HOLD = 600.0


def check_band(
    owner: str, limit: float, clear_below: object, hold: object, *, default_clear: float
) -> tuple[float, float]:
    """The checked ``(clear_below, hold)`` of a gauge whose *limit* is already checked.

    ``clear_below`` is *default_clear* when None, else positive and at most
    *limit*; ``hold`` is seconds >= 0, at most :data:`MAX_HOLD`. Raises
    ``ConfigurationError`` naming *owner* and the bad value.
    """
    clear = check_clear_below(clear_below, limit, default=default_clear)
    return clear, check_seconds(f"{owner} hold", hold, maximum=MAX_HOLD, positive=False)


class Hysteresis:
    """Tripped/clear state over a stream of ``(now, value)`` readings."""

    __slots__ = ("clear_below", "hold", "last_high", "limit", "tripped", "tripped_since")

    def __init__(self, limit: float, clear_below: float, hold: float) -> None:
        self.limit = limit
        self.clear_below = clear_below
        self.hold = hold
        self.tripped = False
        self.tripped_since: float | None = None
        #: When a reading last reached ``clear_below``.
        self.last_high = float("-inf")

    def observe(self, now: float, value: float) -> bool:
        """Feed one reading taken at *now*; returns whether the gauge is tripped."""
        if value >= self.clear_below:
            self.last_high = now
        if value >= self.limit and not self.tripped:
            self.tripped = True
            self.tripped_since = now
            return True
        return self.poll(now)

    def poll(self, now: float) -> bool:
        """Clear when no reading reached ``clear_below`` for more than ``hold``."""
        if self.tripped and now - self.last_high > self.hold:
            self.tripped = False
            self.tripped_since = None
        return self.tripped

    def reset(self) -> None:
        self.tripped = False
        self.tripped_since = None
        self.last_high = float("-inf")
