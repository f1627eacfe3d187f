"""The base every load gauge builds on.

A gauge is read synchronously at admission, before any rule, because it is
the cheapest check and the one that protects the server. Anything slow
(sampling lag, an async user read) happens in the background and only
updates the value the check reads.
"""

from __future__ import annotations

import math
import random
from typing import TYPE_CHECKING

from ._close import TRY_AGAIN_LATER, Close
from ._errors import ConfigurationError
from ._metrics import GaugeReading

if TYPE_CHECKING:
    from ._connection import Connection
    from ._guard import Guard


def check_positive(what: str, value: object, *, integer: bool = False) -> float:
    """Validate a positive finite number (or int), naming *what* in the error."""
    kinds: tuple[type, ...] = (int,) if integer else (int, float)
    if (
        isinstance(value, bool)
        or not isinstance(value, kinds)
        or not math.isfinite(value)  # type: ignore[arg-type]
        or value <= 0  # type: ignore[operator]
    ):
        kind = "a positive integer" if integer else "a positive number"
        raise ConfigurationError(f"{what} must be {kind}, not {value!r}")
    return float(value)  # type: ignore[arg-type]


class LoadGauge:
    """Base class: subclasses provide :meth:`value` and may refine :meth:`tripped`."""

    def __init__(self, limit: float, *, name: str, enforce: bool = True) -> None:
        if not isinstance(enforce, bool):
            raise ConfigurationError(f"enforce must be True or False, not {enforce!r}")
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"gauge name must be a non-empty string, not {name!r}")
        self.limit = limit
        self.name = name
        self.enforce = enforce
        self.sheds = 0
        self.shadow_sheds = 0
        self._guard: Guard | None = None
        self._random = random.Random()
        self._tripped_since: float | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(limit={self.limit!r}, name={self.name!r})"

    def bind(self, guard: Guard) -> None:
        self._guard = guard
        self._random = guard.random

    async def startup(self, guard: Guard) -> None:
        """Start background sampling inside the running loop."""

    async def shutdown(self, guard: Guard) -> None:
        """Stop what :meth:`startup` started."""

    def value(self) -> float:
        raise NotImplementedError

    def tripped(self) -> bool:
        return self.value() >= self.limit

    def retry_after(self, now: float) -> float:
        """A hint that spreads clients out: jittered, longer as overload lasts."""
        if self._tripped_since is None:
            self._tripped_since = now
        lasted = max(0.0, now - self._tripped_since)
        base = min(60.0, 1.0 + lasted / 2.0)
        return base * (1.0 + self._random.random())

    def check(self, conn: Connection) -> Close | None:
        if not self.tripped():
            self._tripped_since = None
            return None
        if self.enforce:
            self.sheds += 1
        else:
            self.shadow_sheds += 1
        now = conn.guard.scheduler.now()
        return Close(
            TRY_AGAIN_LATER, "overloaded", "overloaded", self.retry_after(now), not self.enforce
        )

    def reading(self) -> GaugeReading:
        return GaugeReading(
            self.name,
            float(self.value()),
            float(self.limit),
            self.tripped(),
            self.sheds,
            self.shadow_sheds,
        )
