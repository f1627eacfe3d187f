"""The hand-moved clock of tests (public as ``ws_guard.testing.ManualClock``).

Its own module, with no imports, so the validation of constructor
arguments can name it without pulling in the scheduler.
"""

from __future__ import annotations


class ManualClock:
    """A clock a test moves by hand: a guard built on one arms no timer.

    ``Guard(clock=ManualClock())`` makes every deadline (token expiry,
    idle and lifetime limits, first-message and send waits, drain waves)
    wait until the test moves the clock and calls
    ``guard.scheduler.run_due()``, so they are exact without sleeping. That
    is why a guard takes no other clock: with a plain callable, a deadline
    would silently never fire in production.

    Calling it returns :attr:`now`, in seconds.
    """

    __slots__ = ("now",)

    def __init__(self, now: float = 100.0) -> None:
        #: The time it reads, in seconds (any origin; only differences matter).
        self.now = now

    def __call__(self) -> float:
        return self.now

    def __repr__(self) -> str:
        return f"ManualClock({self.now!r})"

    def advance(self, seconds: float) -> float:
        """Move the clock on by *seconds*; the new time."""
        self.now += seconds
        return self.now
