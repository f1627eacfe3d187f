"""Shedding of open connections when an overload lasts (off by default).

Refusing new handshakes is enough for a short overload. When one lasts,
the connections already open are the load, so a gauge with ``shed_open``
closes a bounded fraction of them with 1013 every interval, newest first
(they have the least state to lose) or by the user's priority, until the
gauge clears. The tick runs on the guard's shared scheduler, so it costs one
heap entry and tests drive it with an injected clock.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ws_guard._core.states import LIVE
from ws_guard._validate import check_positive, check_seconds, check_sync_callable
from ws_guard.errors import ConfigurationError

if TYPE_CHECKING:
    from ws_guard._core.decisions import Close
    from ws_guard._core.scheduler import Deadline
    from ws_guard.rules.context import RuleContext
    from ws_guard.rules.runtime import Runtime

logger = logging.getLogger("ws_guard")

#: Orders connections for shedding: the lowest value is shed first.
Priority = Callable[["RuleContext"], float]


def newest_first(conn: RuleContext) -> float:
    """The default order: the most recently opened connection goes first."""
    return -conn.opened_at


@dataclass(frozen=True, slots=True)
class ShedOpen:
    """Close open connections when the gauge stays tripped for ``after`` seconds.

    Every ``interval`` seconds while it stays tripped, at most ``fraction``
    of the open connections (at least one) are closed with 1013
    ``overloaded; retry-after=<seconds>``. ``priority(conn)`` orders them, lowest
    first; the default sheds the newest first. A connection the priority
    raises for is shed first, and values that do not compare fall back to
    newest first (logged once): a broken priority never stops shedding.
    """

    after: float = 10.0
    fraction: float = 0.05
    interval: float = 1.0
    priority: Priority | None = None

    def __post_init__(self) -> None:
        check_seconds("ShedOpen after", self.after, maximum=3600.0, positive=False)
        check_seconds("ShedOpen interval", self.interval, maximum=600.0)
        fraction = check_positive("ShedOpen fraction", self.fraction)
        if fraction > 1:
            raise ConfigurationError(f"ShedOpen fraction must be at most 1, not {fraction!r}")
        if self.priority is not None and not callable(self.priority):
            raise ConfigurationError(f"ShedOpen priority must be callable, not {self.priority!r}")
        check_sync_callable("ShedOpen priority", self.priority)


class SheddingGauge(Protocol):
    """What the timer uses of its gauge (:class:`ws_guard.load.LoadGauge` has it).

    A protocol, so this module does not import the gauge's, which imports it.
    """

    name: str
    enforce: bool
    open_sheds: int
    shadow_sheds: int

    def observe(self, now: float) -> bool: ...

    @property
    def tripped_since(self) -> float | None: ...

    def overload_close(self, now: float) -> Close: ...


class ShedTimer:
    """The periodic check of one gauge, chained on the guard's scheduler."""

    __slots__ = ("_deadline", "_priority_logged", "config", "gauge", "guard")

    def __init__(self, gauge: SheddingGauge, guard: Runtime, config: ShedOpen) -> None:
        self.gauge = gauge
        self.guard = guard
        self.config = config
        self._deadline: Deadline | None = None
        self._priority_logged = False

    def start(self) -> None:
        self._deadline = self.guard.scheduler.call_later(self.config.interval, self._tick)

    def stop(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _tick(self) -> None:
        now = self.guard.scheduler.now()
        try:
            self.shed(now)
        except Exception:  # a user priority raised: log it, keep the timer alive
            logger.exception("ws_guard could not shed open connections for %s", self.gauge.name)
        self._deadline = self.guard.scheduler.call_at(now + self.config.interval, self._tick)

    def shed(self, now: float) -> int:
        """Close this interval's share of open connections; returns how many."""
        gauge = self.gauge
        if not gauge.observe(now):
            return 0
        since = gauge.tripped_since
        if since is None or now - since < self.config.after:
            return 0
        candidates = [conn for conn in self.guard.live_connections if conn.state in LIVE]
        if not candidates:
            return 0
        count = min(len(candidates), max(1, int(self.config.fraction * len(candidates))))
        victims = self._victims(candidates, count)
        for conn in victims:
            if gauge.enforce:
                gauge.open_sheds += 1
            else:
                gauge.shadow_sheds += 1
            conn.close_soon(gauge.overload_close(now))
        return count

    def _victims(self, candidates: list[RuleContext], count: int) -> list[RuleContext]:
        """The *count* connections to shed, lowest priority first.

        The user's priority is user code that sees each connection: one that
        raises for some (``conn.claims["plan"]`` on an anonymous connection)
        or returns values that do not compare (``None`` beside numbers) once
        made the whole tick fail, so nothing was shed while the overload
        lasted. A connection it raises for goes first (it could not be
        ranked above anyone); values that do not compare fall back to
        newest first.
        """
        priority = self.config.priority
        if priority is None:
            return heapq.nsmallest(count, candidates, key=newest_first)
        unranked: list[RuleContext] = []
        ranked: list[tuple[Any, RuleContext]] = []
        for conn in candidates:
            try:
                ranked.append((priority(conn), conn))
            except Exception as exc:  # noqa: BLE001 - the user's priority: logged, shed first
                self._priority_failed(f"raised {exc!r}", exc)
                unranked.append(conn)
        left = count - len(unranked)
        if left <= 0:
            return unranked[:count]
        try:
            chosen = [conn for _, conn in heapq.nsmallest(left, ranked, key=_rank)]
        except Exception as exc:  # noqa: BLE001 - its values do not compare: logged
            self._priority_failed("returned values that do not compare", exc)
            rest = [conn for _, conn in ranked]
            chosen = heapq.nsmallest(left, rest, key=newest_first)
        return unranked + chosen

    def _priority_failed(self, what: str, exc: BaseException) -> None:
        # Once per timer: a broken priority fails on every tick of an overload.
        if not self._priority_logged:
            self._priority_logged = True
            logger.error(
                "ws_guard ShedOpen priority of %s %s; shedding those connections first "
                "or newest first",
                self.gauge.name,
                what,
                exc_info=exc,
            )


def _rank(entry: tuple[Any, RuleContext]) -> Any:
    return entry[0]
