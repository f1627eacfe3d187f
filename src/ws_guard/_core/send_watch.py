"""How long the app's pending sends have waited for the client, and ending that wait.

Only for a guard with a rule that watches sends (``SlowConsumer``; the
plan's ``send_rules``): the connection then hands the app a send that
records when each send started (one clock read, one dict entry) and drops
the entry when the send returns. One deadline per connection on the
guard's shared heap looks at them: armed by a send when none is armed, at
its start plus the shortest limit. When it fires it takes the oldest
pending send (if any), asks each rule whose limit that send has passed,
and re-arms for the next limit or for a newer send, or not at all when
nothing is pending. So a connection whose sends return at once costs one
heap entry per limit of time, never a timer or a task per send.

Ending the wait cancels only the sends' own awaits: on asyncio the task
that sends (``Task.cancel``, taken back with ``uncancel`` where the send
catches it, as ``asyncio.timeout`` does); elsewhere (trio) an anyio cancel
scope around that one await.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import anyio

from ws_guard._core.states import OPEN
from ws_guard._core.tasks import on_asyncio

if TYPE_CHECKING:
    from ws_guard._core.scheduler import Deadline
    from ws_guard.rules.base import Rule
    from ws_guard.rules.context import RuleContext


class SendWatch:
    """One connection's pending sends: when each started and what can end it.

    *rules* are the plan's ``send_rules``: ``(limit seconds, rule)``,
    shortest limit first. An app may send from several tasks at once, so
    each pending send is kept by what ends it: the task that awaits it
    (asyncio) or the cancel scope around its await (elsewhere).
    """

    __slots__ = ("_conn", "_rules", "cut", "deadline", "on_asyncio", "pending", "reported")

    def __init__(self, conn: RuleContext, rules: tuple[tuple[float, Rule], ...]) -> None:
        self._conn = conn
        self._rules = rules
        #: Pending sends: what ends each -> scheduler-clock seconds when it started.
        self.pending: dict[asyncio.Task[Any] | anyio.CancelScope, float] = {}
        self.deadline: Deadline | None = None
        #: Which way a pending send is ended (see the module docstring).
        self.on_asyncio = on_asyncio()
        #: Tasks whose send ws_guard ended: their await takes that cancel back.
        self.cut: set[asyncio.Task[Any]] = set()
        #: Shadow rules that reported this connection already (each reports once).
        self.reported: set[Rule] | None = None

    def arm(self, since: float) -> None:
        """A send started at *since* and no deadline is armed: arm one."""
        self.deadline = self._conn.guard.scheduler.call_at(since + self._rules[0][0], self.fire)

    def fire(self) -> None:
        """The deadline: ask the rules whose limit the oldest pending send has passed."""
        self.deadline = None
        pending = self.pending
        conn = self._conn
        if not pending or conn.state != OPEN:
            return  # nothing waits; the next send arms again
        since = min(pending.values())
        scheduler = conn.guard.scheduler
        # The clock the sends read (uvloop's loop time is cached to the
        # millisecond and may lag it): a send at its limit is due, not early.
        waited = scheduler.clock() - since
        reported = self.reported
        for limit, rule in self._rules:
            if reported is not None and rule in reported:
                continue
            if waited < limit:
                self.deadline = scheduler.call_at(since + limit, self.fire)
                return
            close = rule.send_waited(conn, waited)
            if close is None:
                continue
            conn.close_soon(close)
            if close.shadow:
                if reported is None:
                    reported = self.reported = set()
                reported.add(rule)
                continue
            self._end_pending_sends()
            return

    def _end_pending_sends(self) -> None:
        """The connection is closed: every pending send returns (dropped)."""
        for sender in list(self.pending):
            if isinstance(sender, asyncio.Task):
                self.cut.add(sender)
            sender.cancel()

    def cancel(self) -> None:
        """The connection ended: drop its deadline."""
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
