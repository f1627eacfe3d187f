"""Holding a connection's messages or sends until a decision: key fetches, first-message tokens.

Also ws_guard's own frames to the client (notices) and the replay of
``websocket.connect`` to an app that accepted before reading it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, cast

from ws_guard._core.admission import Admission
from ws_guard._core.asides import Asides
from ws_guard._core.auth_gate import AuthGate
from ws_guard._core.decisions import Close
from ws_guard._core.states import AUTHENTICATING, GUARD_CLOSED, OPEN
from ws_guard._core.tasks import Job, spawn, wait_done
from ws_guard.codes import INTERNAL_ERROR, REASON_INTERNAL_ERROR
from ws_guard.types import Message

if TYPE_CHECKING:
    from ws_guard._core.auth_gate import GatedConnection

logger = logging.getLogger("ws_guard")


class Holds(Admission):
    """Decisions a connection waits for, and frames it sends on its own."""

    __slots__ = ()

    def connect_message_first(self) -> None:
        """Entering OPEN: if the app has not read ``websocket.connect`` yet, its next receive does.

        ASGI gives the app ``websocket.connect`` from its first ``receive()``,
        even when it accepts first (bare uvicorn does). Once open, receives
        take the fast path, which reads the server's receive, so the message
        is put in front of that for one call: nothing is added to the path
        of later messages.
        """
        if self._connect_message is None:
            return
        server_receive = self._receive

        async def replay() -> Message:
            self._receive = server_receive
            message, self._connect_message = self._connect_message, None
            if message is None:  # the slow path delivered it meanwhile
                return await server_receive()
            return message

        self._receive = replay

    def hold_until_verified(self) -> None:
        """Hold the app's sends after its accept until :meth:`verified` (first-message auth).

        Called at admission. Until the verdict ws_guard reads the client's
        messages itself; see _core/auth_gate.py for what the app sees.
        """
        if self._gate is None:
            self._gate = AuthGate(cast("GatedConnection", self))  # the whole Connection

    def verified(self) -> None:
        """The pending token is valid: held sends go out in order, then the connection opens."""
        gate = self._gate
        if gate is not None and self.state == AUTHENTICATING:
            gate.verified()

    def hold(self, pending: Awaitable[Close | None]) -> None:
        """Deliver no further client message until *pending* has decided.

        For a check that consumed a message but cannot decide without I/O
        (a token signed by a key not fetched yet): it returns ``CONSUME`` and
        hands the rest here. A ``Close`` result closes the connection. Costs
        nothing on the message path: only a consumed message looks here.

        The decision runs as a task of its own and is applied by that task's
        done callback, not by the receive that waits for it: an app's
        ``wait_for(receive(), t)`` or a receive task it cancels, even in the
        very loop turn the decision arrives, can never drop it.
        """
        future = spawn(pending)  # detached: no cancel of the app's reaches it
        self._hold = future
        future.add_done_callback(self._decided)

    def _decided(self, future: Job[Close | None]) -> None:
        """Apply the held decision *future* once; a no-op when applied or dropped by finish()."""
        if self._hold is not future:
            return
        self._hold = None
        if future.cancelled():
            return  # only finish() cancels a hold: nobody reads on
        exc = future.exception()
        if exc is not None:
            # A bug in the deciding code: fail closed, never let the next message pass.
            logger.error("ws_guard could not decide a held message", exc_info=exc)
            self.close_soon(Close(INTERNAL_ERROR, REASON_INTERNAL_ERROR, REASON_INTERNAL_ERROR))
            return
        close = future.result()
        if close is not None:
            self.close_soon(close)  # a shadow close is counted and logged, nothing more

    async def _settle_hold_or_close(self) -> Message | None:
        """Wait for the held decision; the app's disconnect message when it closed the connection.

        A cancel while waiting leaves the hold in place (``wait_done`` never
        cancels what it waits for): the decision is applied when it arrives,
        and the next receive waits for it before reading on.
        """
        pending = self._hold
        if pending is not None:
            await wait_done(pending)
            self._decided(pending)  # normally applied already, by its own callback
        if self.state == GUARD_CLOSED:
            return self._disconnect_message()
        return None

    def send_soon(self, message: Message) -> bool:
        """Send a frame of ws_guard's own to the client (a notice), from sync code.

        Only while the connection is open; returns False when it is not.
        Notices go out in the order given, from a task of their own
        (:class:`Asides`). A guard close sends the notices queued before it
        first, then its close frame (:meth:`Closing._close_frame_after_asides`);
        after the app's close or the client's they are dropped: nothing goes
        out after a close frame.
        """
        if self.state != OPEN:
            return False
        asides = self._asides
        if asides is None:
            asides = self._asides = Asides(self._send_quietly, self._may_send_aside)
        asides.add(message)
        return True

    def _may_send_aside(self) -> bool:
        """Open, or closed by ws_guard whose close frame waits for the notices (not sent yet)."""
        return self.state == OPEN or self.state == GUARD_CLOSED
