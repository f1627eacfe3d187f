"""The per-connection object: the receive/send state machine and the connection's end.

One is made per guarded WebSocket (Starlette's responder pattern), so no
connection state ever lives on the middleware or the guard's config. The
message path is kept to attribute reads and one call for the checks: no
await beyond the server's, no allocation for a message that passes.

The class is built in layers, each a module with one job:
``conn_base`` (slots, request accessors), ``closing`` (closes and their
counting), ``admission`` (handshake, message checks), ``holds`` (decisions
a connection waits for), and here the state machine.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

import anyio
import anyio.lowlevel

from ws_guard._core.closing import CLOSE_FRAME_GRACE
from ws_guard._core.conn_base import MessageCounts
from ws_guard._core.decisions import CONSUME, Close
from ws_guard._core.fast_path import TextState
from ws_guard._core.holds import Holds
from ws_guard._core.send_watch import SendWatch, current_task
from ws_guard._core.states import AUTHENTICATING, CONNECTING, GUARD_CLOSED, LIVE, OPEN
from ws_guard._core.tasks import wait_done
from ws_guard.types import Message

#: What _receive_slow is given for a message no check has seen yet.
_UNCHECKED: Any = object()


class Connection(Holds):
    """One guarded WebSocket from handshake to finish (implements ``RuleContext``)."""

    __slots__ = ()

    async def receive(self) -> Message:
        # The message path: open before and after the wait, a data message the
        # checks pass, one call for the checks. Everything else goes to
        # _receive_slow. Its shape (locals, early returns) is chosen for the
        # interpreter: see docs/benchmarks.md, "After the redesign".
        if self.state != OPEN or self._hold is not None:
            return await self._receive_slow(None, _UNCHECKED)
        server_receive = self._receive
        message = await server_receive()
        if self.state != OPEN or message["type"] != "websocket.receive":
            return await self._receive_slow(message, _UNCHECKED)
        check = self._check
        if check is None:
            return message
        verdict = check(message)
        if verdict is None:
            return message
        return await self._receive_slow(message, verdict)

    def app_receive(self) -> Callable[[], Awaitable[Message]]:
        """The app's receive: :meth:`receive_text` where the plan allows, else :meth:`receive`.

        Called once, when the middleware calls the app (after admission).
        """
        lead = self._lead
        if type(lead) is TextState and lead.marked is None:
            return self.receive_text
        return self.receive

    async def receive_text(self) -> Message:
        """:meth:`receive` with the leading run's check (a :class:`TextState`) written out.

        For a plan that leads with a run taking text with one content test
        and no refresh marker (the common guard: size, types, content): a
        text message that fits the size limit by its length is checked
        here, without the Python call of the run's check (about 450
        instructions per message, see docs/benchmarks.md, "The run's check
        in the receive"). Anything else goes to :meth:`_receive_slow`
        unchecked, where the run's own check decides; so the decisions are
        :meth:`TextState.check`'s (``tests/unit/core/test_receive_text.py``).
        """
        if self.state != OPEN or self._hold is not None:
            return await self._receive_slow(None, _UNCHECKED)
        server_receive = self._receive
        message = await server_receive()
        if self.state != OPEN or message["type"] != "websocket.receive":
            return await self._receive_slow(message, _UNCHECKED)
        lead: TextState = self._lead  # type: ignore[assignment]  # app_receive chose this receive
        run = lead.run
        text = message.get("text")
        if text is None or len(text) > run.quarter:
            return await self._receive_slow(message, _UNCHECKED)
        allowed = run.allowed
        try:
            if allowed(text):  # type: ignore[misc]  # set: a text state has one
                # The common end, inside the try (free on 3.11+) to save a
                # store and a test; nothing here but a slot read can raise.
                rest = lead.rest
                if rest is None:
                    return message
                verdict: Verdict = None
            else:
                verdict = run.content.breach  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001 - the user's check is broken: failed() logs it, 1011
            verdict = run.content.failed()  # type: ignore[union-attr]
        if verdict is None:  # passed the run: the checks after it, outside the try
            verdict = lead.rest(message)  # type: ignore[misc]  # set: read above
            if verdict is None:
                return message
        return await self._receive_slow(message, verdict)

    async def _receive_slow(self, message: Message | None, verdict: Any) -> Message:
        """The rest of :meth:`receive`: replay, closes, refusals, consumed messages.

        *message* is one already read from the server (None: read one), and
        *verdict* its checks' decision (``_UNCHECKED``: not checked yet).
        """
        if message is None:
            if self._connect_message is not None:
                message = self._connect_message
                self._connect_message = None
                return message
            if self._gate is not None:  # the reader reads until the token's verdict
                message = await self._gate.read()
            if message is None:
                if self.state == GUARD_CLOSED:
                    return self._disconnect_message()
                if self._hold is not None:  # an earlier receive was cancelled while it settled
                    closed = await self._settle_hold_or_close()
                    if closed is not None:
                        return closed
        while True:
            if message is None:
                message = await self._receive()
                verdict = _UNCHECKED
            if self.state == GUARD_CLOSED:
                return self._disconnect_message()  # closed while we waited: drop what came
            if message["type"] == "websocket.receive":
                if verdict is _UNCHECKED:
                    verdict = self.check_message(message)
                if verdict is None:
                    return message
                if verdict is not CONSUME:
                    verdict = cast(Close, verdict)
                    if verdict.shadow:  # only from a lone check; a chain records its own
                        self._record_shadow(verdict)
                        return message
                    if self.state not in LIVE:
                        message = None
                        continue  # the app already closed: drop the refused frame, no second close
                    await self._close_open(verdict)
                    return self._disconnect_message()
                # Consumed by a rule. If it left a follow-up (a key fetch for an
                # in-band token), settle it before reading on, so no message
                # overtakes the decision.
                if self._hold is not None:
                    closed = await self._settle_hold_or_close()
                    if closed is not None:
                        return closed
                message = None
                continue
            if message["type"] == "websocket.disconnect":
                self.client_closed(message)
            return message

    def send(self, message: Message) -> Awaitable[None]:
        # Not a coroutine: on the open path the server's own awaitable goes
        # straight back to the app, one frame less per message. ASGI apps
        # await a send at once, so checking the state here rather than at the
        # await is the same thing; a gone client is classified in app_crashed.
        if self.state == OPEN and message["type"] == "websocket.send":
            server_send = self._send  # a local, as in receive()
            return server_send(message)
        return self._send_slow(message)

    def counted(
        self, send: Callable[[Message], Awaitable[None]]
    ) -> tuple[Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]]:
        """The app's receive and *send*, counting data messages (``Guard(count_messages=True)``).

        Opt-in: each adds a coroutine frame per message, so a guard that
        does not count hands the app ``receive`` and *send* as they are. A
        message counts in when the app receives it (after the checks), out
        when its send returned on an open connection (a send ws_guard drops
        after a close does not count).
        """
        counts = self._counts = MessageCounts()
        receive = self.app_receive()

        async def receive_counted() -> Message:
            message = await receive()
            if message["type"] == "websocket.receive":
                counts.received += 1
            return message

        async def send_counted(message: Message) -> None:
            data = self.state == OPEN and message["type"] == "websocket.send"
            await send(message)
            if data:
                counts.sent += 1

        return receive_counted, send_counted

    def watched_send(self) -> Callable[[Message], Awaitable[None]]:
        """The app's send for a guard with a rule that watches sends (the plan's ``send_rules``).

        Called once, when the middleware calls the app: the connection's
        :class:`SendWatch` is made here, so the send itself tests nothing
        but the state, and the backend is chosen here, not per send.
        """
        watch = self._sends = SendWatch(self.full, self.guard.plan.send_rules)
        return self.send_watched if watch.loop is not None else self.send_watched_aside

    async def send_watched(self, message: Message) -> None:
        """:meth:`send` with the pending send entered in the connection's :class:`SendWatch`.

        On asyncio. A coroutine itself (one frame, not two, per send), so
        that a send ws_guard ends returns to the app. The one sending task
        goes in the watch's two slots; anything else (not open, not a data
        message, a second task's send) to :meth:`send_watched_aside`. The
        shape (locals, early returns) is chosen for the interpreter: see
        docs/benchmarks.md, "SlowConsumer on the send path".
        """
        watch: SendWatch = self._sends  # type: ignore[assignment]  # set by watched_send()
        if self.state != OPEN or message["type"] != "websocket.send" or watch.task is not None:
            await self.send_watched_aside(message)
            return
        watch.task = current_task(watch.loop)  # read back from the slot only if cancelled
        if watch.deadline is None:
            watch.seen = watch.arm()
        server_send = self._send  # a local, as in receive()
        try:
            await server_send(message)
        except asyncio.CancelledError:
            task = watch.task  # still this send's: other sends go aside while it is set
            if not watch.ended(task) or self._send_ended(task):
                raise
        finally:
            watch.task = watch.seen = None

    async def send_watched_aside(self, message: Message) -> None:
        """Every watched send but asyncio's one sending task's open data message.

        The app's send off asyncio (trio), where each open send waits in a
        cancel scope of its own; on asyncio, a second task's send.
        """
        watch: SendWatch = self._sends  # type: ignore[assignment]  # set by watched_send()
        if self.state != OPEN or message["type"] != "websocket.send":
            await self._send_slow(message)
            return
        await self._send_aside(watch, message)

    async def _send_aside(self, watch: SendWatch, message: Message) -> None:
        """:meth:`send_watched` for a send in ``watch.pending``: by a cancel scope, or a task."""
        pending = watch.pending
        if watch.loop is None:  # not asyncio (trio): the await in a cancel scope of its own
            with anyio.CancelScope() as scope:
                pending[scope] = watch.arm() if watch.deadline is None else None
                try:
                    await self._send(message)
                finally:
                    del pending[scope]
            if scope.cancelled_caught:
                self.guard.metrics.dropped_sends += 1
            return
        task = current_task(watch.loop)
        pending[task] = watch.arm() if watch.deadline is None else None
        try:
            await self._send(message)
        except asyncio.CancelledError:
            if not watch.ended(task) or self._send_ended(task):
                raise
        finally:
            del pending[task]

    def _send_ended(self, task: asyncio.Task[Any] | None) -> bool:
        """ws_guard's own cancel ended *task*'s send: count a dropped send, take the cancel back.

        True when the task was cancelled by someone else too: that cancel
        goes on (the caller re-raises).
        """
        self.guard.metrics.dropped_sends += 1
        uncancel = getattr(task, "uncancel", None)  # 3.11+
        return uncancel is not None and uncancel() > 0

    async def _send_slow(self, message: Message) -> None:
        state = self.state
        if state == OPEN:
            closing = message["type"] == "websocket.close"
            if closing:
                message = self._app_closed(message)
            try:
                await (self._send_close(message) if closing else self._send(message))
            except OSError:
                self._client_gone()
                raise
            return
        if state == GUARD_CLOSED:
            # Yield once: an app that only sends (a stream to a client that
            # stopped reading) would otherwise spin without ever letting the
            # loop run, and app_exit_timeout's deadline with it. Counted
            # after, so a send cancelled here is not counted as returned.
            await anyio.lowlevel.checkpoint()
            self.guard.metrics.dropped_sends += 1
            return
        gate = self._gate
        if state == AUTHENTICATING and gate is not None:
            if message["type"] == "websocket.close":
                # Not held: the app chose to end, and a close frame carries only
                # its own code and reason. What it sent before is dropped.
                await self._send_close(self._app_closed(message))
                return
            await gate.send(message)  # until the verdict; then in order, or dropped
            return
        if state == CONNECTING:
            kind = message["type"]
            if kind == "websocket.accept":
                for rule in self.guard.plan.accept_rules:
                    rule.on_accept(self, message)
                # The accept itself goes out (the client needs it to send its
                # token); with a token pending, nothing after it does.
                self.state = OPEN if gate is None else AUTHENTICATING
                if gate is None:
                    self.connect_message_first()
                try:
                    await self._send(message)
                except OSError:
                    self._client_gone()
                    raise
                for rule in self.guard.plan.open_rules:
                    rule.on_open(self)
                if gate is not None and self.state == AUTHENTICATING:
                    gate.start()
                return
            if kind == "websocket.close":
                message = self._app_closed(message)
            elif kind == "websocket.http.response.start":
                self._app_refused(message)
        await self._send(message)

    async def finish(self) -> None:
        """Release everything the connection held; runs once, on every path.

        Shielded: it runs in the handler's ``finally``, often because the
        server cancelled the handler, and anyio cancel scopes (trio's, and
        anyio's on asyncio) raise again at every await inside a cancelled
        scope, which would skip the releases below and keep the
        connection's cap slot and count forever.
        """
        if self._finished:
            return
        self._finished = True
        close_task = self._close_task
        held = self._held
        if (close_task is None or close_task.done()) and (
            held is None or not any(rule.release_suspends for rule in held)
        ):
            # Nothing in _finish suspends (no close frame still going out, no
            # release that does I/O), so no cancel can land in it: the common
            # end skips anyio's scope, about a fifth of a guarded handshake.
            await self._finish()
            return
        with anyio.CancelScope(shield=True):
            await self._finish()

    async def _finish(self) -> None:
        if self._sends is not None:
            self._sends.cancel()
        if self._deadlines is not None:
            for deadline in self._deadlines:
                deadline.cancel()
            self._deadlines = None
        hold, self._hold = self._hold, None
        if hold is not None:
            hold.cancel()  # nobody will read on: its decision has no message to guard
        if self._gate is not None:
            self._gate.close()  # stop reading; what the app still holds is dropped
        close_task = self._close_task
        if close_task is not None and not close_task.done():
            # Bounded: a client that stopped reading never takes the frame.
            with anyio.move_on_after(CLOSE_FRAME_GRACE):
                await wait_done(close_task)
            if not close_task.done():
                close_task.cancel()
        if self._asides is not None:
            self._asides.cancel()  # notices still queued after the app's close or the client's
        await self._release()
        if self.admitted:
            self.guard.live_connections.discard(self)
            self.guard.metrics.connection_finished(time.monotonic() - self.opened_at)
        if close_task is not None and close_task.done() and not close_task.cancelled():
            close_task.result()  # a bug in sending it is raised, after the releases


if TYPE_CHECKING:
    from ws_guard._core.auth_gate import GatedConnection
    from ws_guard.rules.context import RuleContext, Verdict

    def _implements(conn: Connection) -> tuple[RuleContext, GatedConnection]:
        """Let mypy check that a Connection is what the protocols promise (never called)."""
        context: RuleContext = conn
        gated: GatedConnection = conn
        return context, gated
