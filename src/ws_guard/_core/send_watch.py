"""How long the app's pending send has waited for the client, and ending that wait.

Only for a guard with a rule that watches sends (``SlowConsumer``; the
plan's ``send_rules``): the connection then hands the app a send that
records when each send started (one clock read) and clears it when the
send returns. One deadline per connection on the guard's shared heap looks
at it: armed by a send when none is armed, at the start plus the shortest
limit. When it fires it finds the pending send (if any), asks each rule
whose limit that send has passed, and re-arms for the next limit or for a
newer send, or not at all when nothing is pending. So a connection whose
sends return at once costs one heap entry per limit of time, never a timer
or a task per send.

Ending the wait cancels only the send's own await: on asyncio the task
that sends (``Task.cancel``, taken back with ``uncancel`` where the send
catches it, as ``asyncio.timeout`` does); elsewhere (trio) an anyio cancel
scope around that one await.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import anyio

from ws_guard._core.states import OPEN
from ws_guard._core.tasks import on_asyncio

if TYPE_CHECKING:
    from ws_guard._core.scheduler import Deadline
    from ws_guard.rules.base import Rule
    from ws_guard.rules.context import RuleContext


class SendWatch:
    """One connection's pending send: when it started and what can end it.

    *rules* are the plan's ``send_rules``: ``(limit seconds, rule)``,
    shortest limit first.
    """

    __slots__ = (
        "_conn",
        "_rules",
        "cut",
        "deadline",
        "on_asyncio",
        "reported",
        "scope",
        "sender",
        "since",
    )

    def __init__(self, conn: RuleContext, rules: tuple[tuple[float, Rule], ...]) -> None:
        self._conn = conn
        self._rules = rules
        #: Scheduler-clock seconds when the pending send started; None: none pending.
        self.since: float | None = None
        self.deadline: Deadline | None = None
        #: Which way a pending send is ended (see the module docstring).
        self.on_asyncio = on_asyncio()
        #: The task that awaits the pending send (asyncio).
        self.sender: asyncio.Task[object] | None = None
        #: The cancel scope around the pending send's await (not asyncio).
        self.scope: anyio.CancelScope | None = None
        #: ws_guard ended the pending send: its await catches that cancel.
        self.cut = False
        #: Shadow rules that reported this connection already (each reports once).
        self.reported: set[Rule] | None = None

    def arm(self, since: float) -> None:
        """A send started at *since* and no deadline is armed: arm one."""
        self.deadline = self._conn.guard.scheduler.call_at(since + self._rules[0][0], self.fire)

    def fire(self) -> None:
        """The deadline: ask the rules whose limit the pending send has passed."""
        self.deadline = None
        since = self.since
        conn = self._conn
        if since is None or conn.state != OPEN:
            return  # nothing waits; the next send arms again
        scheduler = conn.guard.scheduler
        waited = scheduler.now() - since
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
            self._end_pending_send()
            return

    def _end_pending_send(self) -> None:
        self.cut = True
        if self.sender is not None:
            self.sender.cancel()
        elif self.scope is not None:
            self.scope.cancel()

    def cancel(self) -> None:
        """The connection ended: drop its deadline."""
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
