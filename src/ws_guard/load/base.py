"""The base every load gauge builds on.

A gauge is read synchronously at admission, before any rule, because it is
the cheapest check and the one that protects the server. Anything slow
(sampling lag, an async user read) happens in the background and only
updates the state the check reads.

The retry hint a shed client gets is never one constant: a constant brings
every shed client back in the same second, which is the next overload. The
hint grows with how long the overload has lasted and is jittered per client.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, TypedDict

from ws_guard._core.decisions import Close
from ws_guard._validate import check_seconds
from ws_guard.codes import REASON_OVERLOADED, TRY_AGAIN_LATER
from ws_guard.errors import ConfigurationError
from ws_guard.load.shedding import ShedOpen, ShedTimer
from ws_guard.metrics.snapshot import GaugeReading

if TYPE_CHECKING:
    from ws_guard.rules.context import RuleContext
    from ws_guard.rules.runtime import Runtime

__all__ = ["GaugeOptions", "LoadGauge"]

_MAX_HINT = 3600.0


class GaugeOptions(TypedDict, total=False):
    """The keywords every gauge takes besides its own, checked once by :class:`LoadGauge`.

    ``enforce`` (bool, default True): False counts would-be sheds and sheds
    nothing. ``shed_open`` (:class:`ShedOpen` or None): also close open
    connections when the overload lasts. ``retry_min``/``retry_max`` (seconds,
    default 1 and 60): bounds of the ``retry-after`` hint. A bad value raises
    ``ConfigurationError`` naming it.
    """

    enforce: bool
    shed_open: ShedOpen | None
    retry_min: float
    retry_max: float


class LoadGauge:
    """Base class: subclasses provide :meth:`value` and may refine :meth:`observe`.

    ``retry_min``/``retry_max`` bound the ``retry-after`` hint: it starts
    between ``retry_min`` and twice that, grows by half a second per second
    of overload, and never exceeds ``retry_max``. ``shed_open`` (off by
    default) also closes open connections when the overload lasts.
    """

    def __init__(
        self,
        limit: float,
        *,
        name: str,
        enforce: bool = True,
        shed_open: ShedOpen | None = None,
        retry_min: float = 1.0,
        retry_max: float = 60.0,
    ) -> None:
        if not isinstance(enforce, bool):
            raise ConfigurationError(f"enforce must be True or False, not {enforce!r}")
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"gauge name must be a non-empty string, not {name!r}")
        if shed_open is not None and not isinstance(shed_open, ShedOpen):
            raise ConfigurationError(f"shed_open must be a load.ShedOpen, not {shed_open!r}")
        # An hour is the longest hint the client policy honours (its max_hint).
        self.retry_min = check_seconds("retry_min", retry_min, maximum=_MAX_HINT / 2)
        self.retry_max = check_seconds("retry_max", retry_max, maximum=_MAX_HINT)
        if self.retry_max < 2 * self.retry_min:
            raise ConfigurationError(
                f"retry_max must be at least twice retry_min ({retry_min!r}), not {retry_max!r}"
            )
        self.limit = limit
        self.name = name
        self.enforce = enforce
        self.shed_open = shed_open
        #: Handshakes refused with 1013 (enforcing).
        self.sheds = 0
        #: Open connections closed with 1013 (enforcing, ``shed_open``).
        self.open_sheds = 0
        #: Would-be sheds in shadow mode, handshakes and open connections.
        self.shadow_sheds = 0
        self._guard: Runtime | None = None
        self._random = random.Random()
        self._since: float | None = None
        self._shed_timer: ShedTimer | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(limit={self.limit!r}, name={self.name!r})"

    def bind(self, guard: Runtime) -> None:
        """Tie the gauge to *guard*; one guard only.

        A gauge reads and sheds for the guard it is bound to (``ConnectionCount``
        counts that guard's connections), so a second guard would get none of it.
        """
        if self._guard is not None and self._guard is not guard:
            raise ConfigurationError(
                f"{self!r} is already part of another Guard; make one per Guard"
            )
        self._guard = guard
        self._random = guard.random

    async def startup(self, guard: Runtime) -> None:
        """Start background work inside the running loop (subclasses call super)."""
        if self.shed_open is not None and self._shed_timer is None:
            self._shed_timer = ShedTimer(self, guard, self.shed_open)
            self._shed_timer.start()

    async def shutdown(self, guard: Runtime) -> None:
        """Stop what :meth:`startup` started (subclasses call super)."""
        if self._shed_timer is not None:
            self._shed_timer.stop()
            self._shed_timer = None

    # -- state ----------------------------------------------------------------
    def value(self) -> float:
        raise NotImplementedError

    def tripped(self) -> bool:
        """The state as last known, without a clock (safe from any thread)."""
        return self.value() >= self.limit

    def observe(self, now: float) -> bool:
        """Bring the state up to *now* and return it; tracks when it tripped."""
        tripped = self.tripped()
        if not tripped:
            self._since = None
        elif self._since is None:
            self._since = now
        return tripped

    @property
    def tripped_since(self) -> float | None:
        """Clock time the current overload began, ``None`` when clear."""
        return self._since

    def retry_after(self, now: float) -> float:
        """A hint that spreads clients out: jittered, longer as overload lasts."""
        since = self.tripped_since
        lasted = 0.0 if since is None else max(0.0, now - since)
        base = min(self.retry_min + lasted / 2.0, self.retry_max / 2.0)
        return base * (1.0 + self._random.random())

    def overload_close(self, now: float) -> Close:
        """The 1013 decision for one client, with its own jittered hint."""
        return Close(
            TRY_AGAIN_LATER,
            REASON_OVERLOADED,
            REASON_OVERLOADED,
            self.retry_after(now),
            not self.enforce,
            jittered=True,
        )

    def check(self, conn: RuleContext) -> Close | None:
        now = conn.guard.scheduler.now()
        if not self.observe(now):
            return None
        if self.enforce:
            self.sheds += 1
        else:
            self.shadow_sheds += 1
        return self.overload_close(now)

    def reading(self) -> GaugeReading:
        return GaugeReading(
            self.name,
            float(self.value()),
            float(self.limit),
            self.tripped(),
            self.sheds,
            self.shadow_sheds,
            self.open_sheds,
        )
