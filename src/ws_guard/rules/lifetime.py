"""Planned ends of a connection: ``IdleTimeout`` and ``MaxLifetime``, both 1001.

Both run on the guard's shared deadline heap (``_core/scheduler.py``): one
deadline per connection, no task or timer handle of its own, so 10 000 idle
connections keep one loop timer armed and cost no wake-up before their
deadline. The deadlines go through ``RuleContext.call_at`` and are
cancelled when the connection ends, on every path.

1001 "going away" (RFC 6455 section 7.4.1) is the code for an end the
server planned: it is not the client's fault (1008) nor the server's
overload (1013). The reason says which end it was.
"""

from __future__ import annotations

import random
from dataclasses import replace
from typing import TYPE_CHECKING

from ws_guard._core.decisions import Close
from ws_guard._validate import check_non_negative, check_random_source, check_seconds
from ws_guard.codes import GOING_AWAY, REASON_IDLE_TIMEOUT, REASON_MAX_LIFETIME
from ws_guard.errors import ConfigurationError
from ws_guard.rules.base import Rule
from ws_guard.types import Message

if TYPE_CHECKING:
    from collections.abc import Callable

    from ws_guard.rules.context import Checker, RuleContext

#: Longest idle timeout or lifetime, in seconds: a day. Far above any sane
#: setting and below a minute written in milliseconds, so that mistake fails.
MAX_SECONDS = 86_400.0
#: Longest ``MaxLifetime(retry_after=...)``, in seconds.
MAX_RETRY_AFTER = 600.0
#: ``MaxLifetime``'s default spread, as a fraction of ``seconds``.
DEFAULT_JITTER = 0.1
#: ``MaxLifetime``'s default bound of its retry hint, in seconds.
DEFAULT_RETRY_AFTER = 5.0
#: "No message yet" and "nothing reported yet": one shared float, not one per connection.
_NEVER = float("-inf")


class IdleTimeout(Rule):
    """Close with 1001 ``idle_timeout`` after ``seconds`` without a client message.

    Activity is a client data message (text or binary) that reaches the
    app: ASGI does not surface pings and pongs, so a client that only pings
    is idle, and a message ws_guard consumes itself (an in-band token
    refresh) does not count. The app's own sends do not count either: a
    connection the server streams to but the client never writes on is idle.

    The clock starts when the connection is admitted, just before the app
    sees it, so an app that never accepts is idle too (ws_guard then
    accepts and closes, so the client reads the code). One deadline per
    connection is armed at ``admission + seconds``; each message only
    stores the time (one clock read). When the deadline fires after a
    message came, it is moved to ``last message + seconds``; otherwise the
    connection closes. In shadow mode the breach is counted and logged once
    per idle stretch and the connection stays open.

    List it after the message rules: its check then runs at the end of
    their fused run, one call per message; listed before them, every
    message goes through a chain of checks instead.

    Raises :class:`~ws_guard.ConfigurationError` for ``seconds`` that is
    not a positive number of seconds of at most a day.
    """

    def __init__(self, seconds: float, *, enforce: bool = True, name: str | None = None) -> None:
        self.seconds = check_seconds("IdleTimeout seconds", seconds, maximum=MAX_SECONDS)
        super().__init__(enforce=enforce, name=name)
        self.timed_out = self.breach(GOING_AWAY, REASON_IDLE_TIMEOUT)

    def __repr__(self) -> str:
        return f"IdleTimeout({self.seconds!r}, enforce={self.enforce!r}, name={self.name!r})"

    def checker(self, conn: RuleContext) -> Checker:
        # Called once per admitted connection: the watch is armed here and
        # reached only through its check and its deadline, so it needs no
        # entry in ``conn.extra`` (a dict per connection when auth holds the
        # first slot).
        watch = _IdleWatch(self, conn)
        watch.start()
        return watch.seen


class _IdleWatch:
    """One connection's idle clock: the last message's time and the pending deadline."""

    __slots__ = ("clock", "conn", "last", "reported", "rule")

    def __init__(self, rule: IdleTimeout, conn: RuleContext) -> None:
        self.rule = rule
        self.conn = conn
        #: The guard's cheap clock (``time.monotonic`` or the injected one).
        self.clock: Callable[[], float] = conn.guard.scheduler.clock
        #: When the last client message passed (clock seconds); admission before one.
        self.last = _NEVER
        #: ``last`` when a shadow breach was reported: one report per idle stretch.
        self.reported = _NEVER

    def seen(self, message: Message) -> None:
        """The per-message check: a clock read and a store; never closes."""
        self.last = self.clock()

    def start(self) -> None:
        self.last = self.conn.guard.scheduler.now()
        # The watch itself is the deadline's callback: no bound method to keep
        # per connection (10 000 idle connections multiply every object).
        self.conn.call_at(self.last + self.rule.seconds, self)

    def __call__(self) -> None:
        """The deadline: close if nothing came since, else move it to the new end."""
        conn = self.conn
        seconds = self.rule.seconds
        due = self.last + seconds
        now = conn.guard.scheduler.now()
        if due > now:
            conn.call_at(due, self)
            return
        close = self.rule.timed_out
        if not close.shadow:
            conn.close_soon(close)
            return
        # Shadow mode: report once per idle stretch, keep watching for the next one.
        if self.reported != self.last:
            self.reported = self.last
            conn.close_soon(close)
        conn.call_at(now + seconds, self)


class MaxLifetime(Rule):
    """Close with 1001 ``max_lifetime; retry-after=<seconds>`` after ``seconds`` plus a spread.

    Each connection draws its end once, when the app accepts: ``seconds``
    plus a uniform draw in ``[0, jitter]`` (default: a tenth of
    ``seconds``), so connections opened together (a fleet reconnecting
    after a deploy) do not all close together. The close carries a retry
    hint, a uniform draw in ``[0, retry_after]`` seconds (default 5) sent
    to a tenth of a second, so the clients of connections closed in the
    same instant do not all come back in the same instant; ws_guard's
    clients wait the hint plus a short random delay.

    The random source is ``random_source``, else the guard's
    (``Guard(random_source=...)``). In shadow mode the end is counted and
    logged once and the connection stays open.

    Raises :class:`~ws_guard.ConfigurationError` for ``seconds`` that is
    not a positive number of seconds of at most a day, a ``jitter`` below 0
    or above ``seconds``, a ``retry_after`` below 0 or above 600 seconds,
    or a ``random_source`` that is not a :class:`random.Random`.
    """

    def __init__(
        self,
        seconds: float,
        *,
        jitter: float | None = None,
        retry_after: float = DEFAULT_RETRY_AFTER,
        random_source: random.Random | None = None,
        enforce: bool = True,
        name: str | None = None,
    ) -> None:
        self.seconds = check_seconds("MaxLifetime seconds", seconds, maximum=MAX_SECONDS)
        if jitter is None:
            jitter = self.seconds * DEFAULT_JITTER
        self.jitter = check_non_negative("MaxLifetime jitter", jitter, unit="seconds")
        if self.jitter > self.seconds:
            raise ConfigurationError(
                f"MaxLifetime jitter must not exceed seconds ({self.seconds!r}), not {jitter!r}"
            )
        self.retry_after = check_seconds(
            "MaxLifetime retry_after", retry_after, maximum=MAX_RETRY_AFTER, positive=False
        )
        self.random = check_random_source(random_source)
        super().__init__(enforce=enforce, name=name)

    def __repr__(self) -> str:
        return (
            f"MaxLifetime({self.seconds!r}, jitter={self.jitter!r}, "
            f"retry_after={self.retry_after!r}, enforce={self.enforce!r}, name={self.name!r})"
        )

    def on_open(self, conn: RuleContext) -> None:
        rng = self.random or conn.guard.random
        when = conn.guard.scheduler.now() + self.seconds + rng.random() * self.jitter
        conn.call_at(when, _LifetimeEnd(self, conn))

    def ended(self, rng: random.Random) -> Close:
        """The close for a connection past its lifetime, with a fresh hint drawn from *rng*."""
        hint = rng.random() * self.retry_after
        return replace(self.breach(GOING_AWAY, REASON_MAX_LIFETIME, hint), jittered=True)


class _LifetimeEnd:
    """One connection's end, the deadline's callback: two slots, the least a callback can be."""

    __slots__ = ("conn", "rule")

    def __init__(self, rule: MaxLifetime, conn: RuleContext) -> None:
        self.rule = rule
        self.conn = conn

    def __call__(self) -> None:
        rule = self.rule
        self.conn.close_soon(rule.ended(rule.random or self.conn.guard.random))
