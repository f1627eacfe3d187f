"""How long the app's pending sends have waited for the client, and ending that wait.

Only for a guard with a rule that watches sends (``SlowConsumer``; the
plan's ``send_rules``): the connection then hands the app a send that
notes each send while it is pending (the sending task in two slots; a
second task's send, or a cancel scope off asyncio, in a dict) and reads no
clock (a clock read costs as much as the rest of the send's bookkeeping;
see docs/benchmarks.md). One deadline per connection on the guard's shared
heap looks at them, every quarter of the shortest limit while sends are
pending: it stamps a send it sees for the first time with the time it
sees it, so a send is timed from at most a quarter limit after it started
and is never closed early. The send that arms the deadline is stamped
exactly (arming reads the clock anyway). When nothing is pending the
deadline is not re-armed; the next send arms it. So a connection whose
sends return at once costs one heap entry per quarter limit of sending,
never a timer or a task per send.

Ending the wait cancels only the sends' own awaits: on asyncio the task
that sends (``Task.cancel``, taken back with ``uncancel`` where the send
catches it, as ``asyncio.timeout`` does); elsewhere (trio) an anyio cancel
scope around that one await.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ws_guard._core.states import OPEN
from ws_guard._core.tasks import on_asyncio

if TYPE_CHECKING:
    from ws_guard._core.scheduler import Deadline
    from ws_guard.rules.base import Rule
    from ws_guard.rules.context import RuleContext


def _task_lookup() -> Callable[[asyncio.AbstractEventLoop | None], asyncio.Task[Any] | None]:
    """The cheapest ``current_task(loop)`` this Python has.

    From 3.12 ``asyncio.current_task`` is written in C. Before, it is a
    Python function around the ``_current_tasks`` dict (about a microsecond
    per send here); that dict's ``get`` gives the same answer.
    """
    if sys.version_info < (3, 12):
        tasks = getattr(asyncio.tasks, "_current_tasks", None)
        if isinstance(tasks, dict):
            get: Callable[[asyncio.AbstractEventLoop | None], asyncio.Task[Any] | None]
            get = tasks.get
            return get
    return asyncio.current_task


#: ``current_task(loop)``: the task running on *loop* (only ever called with a loop).
current_task = _task_lookup()


class SendWatch:
    """One connection's pending sends: what ends each, and when it was first seen.

    *rules* are the plan's ``send_rules``: ``(limit seconds, rule)``,
    shortest limit first. An app may send from several tasks at once, so
    each pending send is kept by what ends it. Its value is the
    scheduler-clock time it was first seen pending, ``None`` until the
    deadline sees it.
    """

    __slots__ = (
        "_conn",
        "_rules",
        "_step",
        "cut",
        "deadline",
        "loop",
        "on_asyncio",
        "pending",
        "reported",
        "seen",
        "task",
    )

    def __init__(self, conn: RuleContext, rules: tuple[tuple[float, Rule], ...]) -> None:
        self._conn = conn
        self._rules = rules
        #: Seconds between two looks while sends are pending.
        self._step = rules[0][0] / 4
        #: The usual case, one task sending, in two slots (cheaper than the
        #: dict per send): its task and when it was first seen pending.
        self.task: asyncio.Task[Any] | None = None
        self.seen: float | None = None
        #: Every other pending send (a second task's, or a cancel scope off asyncio).
        self.pending: dict[Any, float | None] = {}
        self.deadline: Deadline | None = None
        #: Which way a pending send is ended (see the module docstring).
        self.on_asyncio = on_asyncio()
        #: The asyncio loop (for :data:`current_task`); None elsewhere.
        self.loop = asyncio.get_running_loop() if self.on_asyncio else None
        #: Tasks whose send ws_guard ended: their await takes that cancel back.
        #: Made when it ends one: most connections never need it.
        self.cut: set[asyncio.Task[Any] | None] | None = None
        #: Shadow rules that reported this connection already (each reports once).
        self.reported: set[Rule] | None = None

    def arm(self) -> float | None:
        """A send starts and no deadline is armed: arm one; the send's stamp (now).

        ``None`` when every rule is a shadow one that has reported: nothing
        is left to watch.
        """
        if self.reported is not None and len(self.reported) == len(self._rules):
            return None
        scheduler = self._conn.guard.scheduler
        now = scheduler.clock()
        self.deadline = scheduler.call_at(now + self._step, self.fire)
        return now

    def fire(self) -> None:
        """The deadline: stamp new pending sends, ask the rules the oldest has passed."""
        self.deadline = None
        pending = self.pending
        conn = self._conn
        if (self.task is None and not pending) or conn.state != OPEN:
            return  # nothing waits; the next send arms again
        scheduler = conn.guard.scheduler
        now = scheduler.clock()
        oldest = now
        if self.task is not None:
            if self.seen is None:
                self.seen = now  # started since the last look: at the latest now
            else:
                oldest = self.seen
        for sender, seen in pending.items():
            if seen is None:
                pending[sender] = now  # started since the last look: at the latest now
            elif seen < oldest:
                oldest = seen
        waited = now - oldest
        reported = self.reported
        for limit, rule in self._rules:
            if reported is not None and rule in reported:
                continue
            if waited < limit:
                # Back when this send's limit is up, or sooner to stamp newer sends.
                self.deadline = scheduler.call_at(min(oldest + limit, now + self._step), self.fire)
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
        senders = list(self.pending)
        if self.task is not None:
            senders.append(self.task)
        for sender in senders:
            if isinstance(sender, asyncio.Task):
                if self.cut is None:
                    self.cut = set()
                self.cut.add(sender)
            sender.cancel()

    def ended(self, task: asyncio.Task[Any] | None) -> bool:
        """Whether ws_guard ended *task*'s send (then forget it: the cancel is taken back)."""
        cut = self.cut
        if cut is None or task not in cut:
            return False
        cut.discard(task)
        return True

    def cancel(self) -> None:
        """The connection ended: drop its deadline."""
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
