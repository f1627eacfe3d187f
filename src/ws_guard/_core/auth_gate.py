"""Hold an accepted connection's traffic until its first-message token is verified.

With ``rules.from_first_message`` the app must accept before the client can
send its token, so without this gate the app's first sends (room history
right after ``accept()``) would reach a client that never authenticates.
While the verdict is pending (connection state ``AUTHENTICATING``):

* the app's ``websocket.accept`` has gone out, and nothing after it does:
  each app send awaits the verdict, one per sending task (the app's own
  awaits are the bound; nothing is queued that the app is not waiting on);
* ws_guard reads the client's messages itself (a task of its own), because an
  app blocked in a held send never calls ``receive()``; the app's
  ``receive()`` waits for that reader and then reads on as usual;
* an app ``websocket.close`` goes out at once: the app chose to end, and a
  close frame carries only the app's own code and reason.

On a valid token the held sends go out in the order they were made, one at
a time, before any later send (the state stays ``AUTHENTICATING`` until the
queue is empty). Otherwise (a close by ws_guard, the app or the client) they
are dropped and counted in ``dropped_sends``, and the app's ``send()``
returns ``None``, as a send after a guard close does.

Cancellation: a held send whose task is cancelled while it waits leaves the
queue and is never sent; one cancelled after its turn came passes the turn
on. The reader is never cancelled by the app: it is a detached task (see
_core/tasks.py), a cancelled ``receive()`` only stops waiting for it
(``wait_done`` never cancels what it waits for), and its verdict is applied
by the reader task itself.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from typing import TYPE_CHECKING, Protocol, cast

import anyio

from ws_guard._core.decisions import CONSUME, Close
from ws_guard._core.states import AUTHENTICATING, OPEN
from ws_guard._core.tasks import Job, spawn, wait_done
from ws_guard.codes import INTERNAL_ERROR, REASON_INTERNAL_ERROR
from ws_guard.types import Message

if TYPE_CHECKING:
    from ws_guard.rules.context import Verdict
    from ws_guard.rules.runtime import Runtime
    from ws_guard.types import Receive, Send

logger = logging.getLogger("ws_guard")


class GatedConnection(Protocol):
    """What the gate uses of its connection (``_core.connection.Connection`` has it).

    A protocol, so the gate's module does not import the connection's, which
    builds the gate.
    """

    state: int
    _receive: Receive
    _send: Send
    _hold: Job[Close | None] | None

    @property
    def guard(self) -> Runtime: ...

    def client_closed(self, message: Message) -> None: ...

    def check_message(self, message: Message) -> Verdict: ...

    async def _settle_hold_or_close(self) -> Message | None: ...

    async def _close_open(self, close: Close) -> None: ...

    def close_soon(self, close: Close) -> None: ...

    def _client_gone(self) -> None: ...

    def connect_message_first(self) -> None: ...


class _Turn:
    """Whether a held send may go (True) or is dropped (False); None until told."""

    __slots__ = ("event", "go")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.go: bool | None = None

    def give(self, go: bool) -> None:
        self.go = go
        self.event.set()


#: A held send and the turn that says whether it may go.
_Held = tuple[Message, _Turn]


class AuthGate:
    """One connection's hold on its traffic until the first-message verdict."""

    __slots__ = ("_held", "_sending", "conn", "decided", "reader", "stash")

    def __init__(self, conn: GatedConnection) -> None:
        self.conn = conn
        #: The token was verified: held sends go out, then the state becomes OPEN.
        self.decided = False
        #: The task reading client messages until the verdict (started at accept).
        self.reader: Job[None] | None = None
        #: A message the reader read but does not judge, left for the app's receive.
        self.stash: Message | None = None
        self._held: deque[_Held] = deque()
        #: A held send has its turn and is being handed to the server.
        self._sending = False

    # -- the reader -------------------------------------------------------------
    def start(self) -> None:
        """The accept went out: read the client's messages until the verdict."""
        reader = spawn(self._read())
        self.reader = reader
        reader.add_done_callback(self._read_done)

    async def _read(self) -> None:
        conn = self.conn
        while conn.state == AUTHENTICATING and not self.decided:
            message = await conn._receive()
            kind = message["type"]
            if kind == "websocket.disconnect":
                conn.client_closed(message)
                self.stash = message  # the app's receive returns it
                return
            if kind != "websocket.receive" or conn.state != AUTHENTICATING or self.decided:
                # Closed or verified while this was read: the receive path judges it
                # (after a guard close it is dropped, as any message then is).
                self.stash = message
                return
            verdict = conn.check_message(message)
            if verdict is CONSUME:
                if conn._hold is not None:  # a key fetch: its decision is applied by its task
                    await conn._settle_hold_or_close()
                continue
            if verdict is not None and not cast(Close, verdict).shadow:
                await conn._close_open(cast(Close, verdict))
                return
            # The auth check runs first and takes every message while it waits
            # (enforced mode only gates): a message it let through is a bug here.
            raise RuntimeError("a client message passed while its token was pending")

    def _read_done(self, reader: Job[None]) -> None:
        if reader.cancelled():
            return  # only close() cancels it: the connection is over
        exc = reader.exception()
        if exc is not None:
            # Fail closed: nothing the app sent goes out unverified.
            logger.error("ws_guard could not read a first-message token", exc_info=exc)
            self.conn.close_soon(
                Close(INTERNAL_ERROR, REASON_INTERNAL_ERROR, REASON_INTERNAL_ERROR)
            )

    async def read(self) -> Message | None:
        """For the app's receive: wait for the reader; the message it left, if any."""
        reader = self.reader
        if reader is not None and not reader.done():
            await wait_done(reader)
        message, self.stash = self.stash, None
        return message

    # -- held sends -------------------------------------------------------------
    async def send(self, message: Message) -> None:
        """An app send before the verdict: wait for it, then send in order or drop."""
        conn = self.conn
        turn = _Turn()
        entry: _Held = (message, turn)
        self._held.append(entry)
        try:
            await turn.event.wait()
        except anyio.get_cancelled_exc_class():
            if turn.go is None:
                self._forget(entry)  # cancelled while waiting: never sent
            elif turn.go:
                self._pass_turn()  # its turn came, then the cancel: the next one goes
            raise
        go = turn.go
        if not go or conn.state != AUTHENTICATING:
            conn.guard.metrics.dropped_sends += 1
            if go:
                self._pass_turn()
            return
        try:
            await conn._send(message)
        except OSError:
            conn._client_gone()
            raise
        finally:
            self._pass_turn()

    def _forget(self, entry: _Held) -> None:
        # Already taken off by _next (and given False): nothing to undo.
        with contextlib.suppress(ValueError):
            self._held.remove(entry)

    def _pass_turn(self) -> None:
        self._sending = False
        self._next()

    def _next(self) -> None:
        """Give the next held send its turn, or drop them all when the connection closed."""
        conn = self.conn
        if self._sending:
            return  # the send in flight calls back when it is done
        live = conn.state == AUTHENTICATING
        if live and not self.decided:
            return  # no verdict yet: everything waits
        while self._held:
            _, turn = self._held.popleft()
            turn.give(live)
            if live:
                self._sending = True
                return
        if live and self.decided:
            conn.state = OPEN  # every held send is out: the fast paths take over
            conn.connect_message_first()

    def verified(self) -> None:
        """The token is valid: flush the held sends in order, then open."""
        self.decided = True
        self._next()

    def shut(self) -> None:
        """The connection closed before (or while) flushing: drop what is held."""
        self._sending = False
        self._next()

    def close(self) -> None:
        """The connection is finished: stop reading and drop what is held."""
        reader = self.reader
        if reader is not None and not reader.done():
            reader.cancel()
        self.shut()
