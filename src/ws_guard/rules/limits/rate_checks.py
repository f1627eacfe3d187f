"""The pieces of a rate's message check that ``MessageRate`` and ``ByteRate`` share.

A check is a closure over the windows a connection counts in: its own
(``by_connection``), or its key's, looked up in the rule's
:class:`~ws_guard.rules.limits.expiring.ExpiringStates` (one per rate) and
looked up again once a window has ended, since the sweeper may have dropped
it. A breach goes through :class:`Report`, which keeps shadow mode quiet
for the rest of the window. Times are seconds on the guard's clock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ws_guard._core.decisions import Close
from ws_guard.rules.limits.leases import STORAGE_DOWN
from ws_guard.rules.limits.rates import Rate
from ws_guard.types import Message

if TYPE_CHECKING:
    from ws_guard.rules.context import Checker, RuleContext
    from ws_guard.rules.limits.expiring import ExpiringStates
    from ws_guard.rules.limits.warning import Warner
    from ws_guard.rules.runtime import Runtime

_INF = float("inf")

#: A rule's key read for one connection (``LimitRule._read_key``): the key,
#: ``None`` (not counted), or the rule's close when its key function failed.
ReadKey = Callable[["RuleContext"], "str | Close | None"]


class Report:
    """A checker's breach path: the close, or nothing while shadow mode is quiet.

    In shadow mode (``enforce=False``) a breach is reported once per window,
    not once per message: after a report, breaches stay quiet until the
    window ends (``until``, by default *retry* seconds on, or one second
    while storage is down). Only breaches call it, so a message that passes
    pays nothing for it.
    """

    __slots__ = ("deny", "enforce", "quiet_until")

    def __init__(self, deny: Callable[[float], Close], enforce: bool) -> None:
        self.deny = deny
        self.enforce = enforce
        self.quiet_until = -_INF

    def __call__(self, t: float, retry: float, until: float | None = None) -> Close | None:
        """The close for a breach at *t* (seconds on the guard's clock), *retry* seconds left."""
        if not self.enforce:
            if t < self.quiet_until:
                return None
            if until is None:  # a storage outage reports once a second
                until = t + (1.0 if retry == STORAGE_DOWN else retry)
            self.quiet_until = until
        return self.deny(retry)


def shared_windows(
    conn: RuleContext, key_of: ReadKey, maps: Sequence[ExpiringStates[Any]]
) -> Callable[[float], list[Any] | Close | None]:
    """The connection's windows of a shared key at a time, one per rate of *maps*.

    ``None`` while the connection has no key (``by_user`` before an in-band
    token), the rule's close when its key function failed; a window that has
    ended is looked up again, since the sweeper may have dropped it.
    """
    held: list[Any] = []
    key: str | None = None

    def windows_at(t: float) -> list[Any] | Close | None:
        nonlocal key
        if key is None:
            found = key_of(conn)  # by_user may appear only after an in-band token
            if found is None or isinstance(found, Close):
                return found
            key = found
            held.extend(states.get(key, t) for states in maps)
            return held
        for i, window in enumerate(held):
            if t >= window.end:  # a dead window may have been swept: look it up again
                held[i] = maps[i].get(key, t)
        return held

    return windows_at


def sweeper(states: ExpiringStates[Any], guard: Runtime) -> Callable[[], Any]:
    """The maintenance job that drops *states*' ended windows."""

    async def sweep() -> None:
        states.sweep(guard.scheduler.clock())

    return sweep


# -- MessageRate's checks: each message takes one from every window ------------------
def single_checker(clock: Callable[[], float], rate: Rate, report: Report) -> Checker:
    """One rate per connection, the common case: a clock read and two comparisons."""
    limit, window = rate.limit, rate.window
    end = -_INF
    count = 0

    def check(message: Message) -> Close | None:
        nonlocal end, count
        t = clock()
        if t >= end:
            end = t + window
            count = 1
            return None
        if count < limit:
            count += 1
            return None
        return report(t, end - t, end)

    return check


def single_shared_checker(
    conn: RuleContext,
    clock: Callable[[], float],
    key_of: ReadKey,
    states: ExpiringStates[Any],
    report: Report,
) -> Checker:
    """One rate on a shared key: a clock read, one comparison, the window's ``take``."""
    window: Any = None
    key: str | None = None

    def check(message: Message) -> Close | None:
        nonlocal window, key
        t = clock()
        held = window
        if held is None or t >= held.end:  # a dead window may have been swept: look it up
            if key is None:
                found = key_of(conn)  # by_user may appear only after an in-band token
                if found is None or isinstance(found, Close):
                    return found
                key = found
            held = window = states.get(key, t)
        retry = held.take(t)
        if retry is None:
            return None
        return report(t, retry)

    return check


def combined_checker(
    clock: Callable[[], float],
    windows_at: Callable[[float], Any],
    report: Report,
    warner: Warner | None = None,
) -> Checker:
    """Several rates: every window takes the message; the longest wait (or an outage) refuses.

    With a *warner* (``warn_at``), an admitted message may warn the client.
    """

    def check(message: Message) -> Close | None:
        t = clock()
        windows = windows_at(t)
        if windows is None or isinstance(windows, Close):
            return windows
        worst: float | None = None
        for window in windows:
            retry = window.take(t)
            if retry is not None and worst != STORAGE_DOWN:
                worst = retry if worst is None or retry == STORAGE_DOWN else max(worst, retry)
        if worst is None:
            if warner is not None:
                warner.after(t, windows)
            return None
        return report(t, worst)

    return check
