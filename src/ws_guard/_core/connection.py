"""The per-connection object: state machine, wrapped receive/send, closes.

One is made per guarded WebSocket (Starlette's responder pattern), so no
connection state ever lives on the middleware or the guard's config. The
message path is kept to attribute reads and the rules' own arithmetic: no
await beyond the server's, no allocation for a message that passes.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qs

import anyio

from ws_guard._core.auth_gate import AuthGate
from ws_guard._core.decisions import CONSUME, Close
from ws_guard._core.request import joined_headers, loggable_path
from ws_guard._core.rule_state import EMPTY, RuleState
from ws_guard._core.scheduler import Deadline
from ws_guard._core.states import AUTHENTICATING, CLOSED, CONNECTING, GUARD_CLOSED, LIVE, OPEN
from ws_guard._core.tasks import Job, spawn, wait_done
from ws_guard.codes import (
    ABNORMAL_CLOSURE,
    HTTP_FORBIDDEN,
    INTERNAL_ERROR,
    NORMAL,
    is_sendable_code,
    sendable_code_for,
    truncate_reason,
)
from ws_guard.rules.base import Checker, Rule, Verdict
from ws_guard.rules.keys import resolve_client_ip
from ws_guard.types import Message, Receive, Scope, Send

if TYPE_CHECKING:
    from ws_guard._core.guard import Guard

logger = logging.getLogger("ws_guard")


#: What _receive_slow is given for a message no check has seen yet.
_UNCHECKED: Any = object()

_STATE_NAMES = {
    CONNECTING: "connecting",
    OPEN: "open",
    AUTHENTICATING: "authenticating",
    CLOSED: "closed",
    GUARD_CLOSED: "closed",
}


#: Seconds :meth:`Connection.finish` waits for ws_guard's close frame to be
#: handed to the server before it gives up on the client and releases.
CLOSE_FRAME_GRACE = 1.0


def _server_refused_send(exc: BaseException) -> bool:
    """Whether *exc* is, or was raised while handling, the server's ``ClientDisconnected``.

    uvicorn raises it from a send to a client that left; Starlette turns it
    into ``WebSocketDisconnect(1006)`` raised from it, so it sits in the
    exception's context chain. A ``WebSocketDisconnect`` the app raises on
    its own (a bad token) has no such context. Matched by name: no server
    imports.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if any(cls.__name__ == "ClientDisconnected" for cls in type(current).__mro__):
            return True
        current = current.__cause__ or current.__context__
    return False


class ConnectionInfo:
    """What the app may read about its connection, at ``scope["ws_guard"]``."""

    __slots__ = ("_conn",)

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    @property
    def id(self) -> str:
        return self._conn.id

    @property
    def client_ip(self) -> str:
        return self._conn.client_ip

    @property
    def subject(self) -> str | None:
        """The verified JWT ``sub``, or ``None`` without a JWT rule."""
        return self._conn.subject

    @property
    def claims(self) -> Mapping[str, Any] | None:
        """The verified JWT claims (updated on in-band refresh)."""
        return self._conn.claims

    @property
    def state(self) -> str:
        return _STATE_NAMES[self._conn.state]

    def __repr__(self) -> str:
        return (
            f"ConnectionInfo(id={self.id!r}, client_ip={self.client_ip!r}, "
            f"subject={self.subject!r})"
        )


class Connection:
    """One guarded WebSocket from handshake to finish."""

    __slots__ = (
        "_asides",
        "_check",
        "_close_task",
        "_connect_message",
        "_deadlines",
        "_finished",
        "_gate",
        "_guard_close",
        "_headers",
        "_held",
        "_hold",
        "_id",
        "_query",
        "_receive",
        "_send",
        "_state_key",
        "_state_more",
        "_state_value",
        "admitted",
        "cancelled_by_guard",
        "claims",
        "client_ip",
        "guard",
        "opened_at",
        "scope",
        "state",
        "subject",
        "task",
    )

    def __init__(self, guard: Guard, scope: Scope, receive: Receive, send: Send) -> None:
        self.guard = guard
        self.scope = scope
        self._receive = receive
        self._send = send
        self._id: str | None = None
        self.state = CONNECTING
        self._headers: dict[str, str] | None = None  # parsed on first header() call
        self._query: dict[str, list[str]] | None = None
        client = scope.get("client")
        self.client_ip = resolve_client_ip(
            client[0] if client else None,
            self.header("x-forwarded-for") if guard.trusted_proxies else None,
            guard.trusted_proxies,
        )
        self.subject: str | None = None
        self.claims: Mapping[str, Any] | None = None
        # The rules' state (see _core/rule_state.py): one entry in slots, more in a dict.
        self._state_key: Any = EMPTY
        self._state_value: Any = EMPTY
        self._state_more: dict[Any, Any] | None = None
        self.admitted = False
        self.opened_at = 0.0
        #: The message checks: one rule's (or fused run's) checker, or a chain.
        self._check: Checker | None = None
        self._connect_message: Message | None = None
        self._guard_close: Close | None = None
        self._close_task: Job[Any] | None = None
        # Created on first use: most connections never need them, and an idle
        # connection's footprint is what 10 000 of them multiply.
        self._deadlines: list[Deadline] | None = None
        self._held: list[Rule] | None = None
        self._hold: Job[Close | None] | None = None
        self._asides: set[Job[Any]] | None = None
        #: Set at admission when a first-message token must be verified before
        #: the app's sends may reach the client (see _core/auth_gate.py).
        self._gate: AuthGate | None = None
        self._finished = False
        #: What stops the app (set by the middleware): its task on asyncio, a
        #: cancel scope around it elsewhere; and whether ws_guard cancelled it
        #: because it ran on after a guard close.
        self.task: asyncio.Task[Any] | anyio.CancelScope | None = None
        self.cancelled_by_guard = False

    @property
    def extra(self) -> MutableMapping[Any, Any]:
        """Per-connection state of the rules, keyed by the rule (an auth rule's session too)."""
        return RuleState(self)

    @property
    def id(self) -> str:
        """A random id, unique across processes (Redis connection slots use it)."""
        if self._id is None:
            self._id = uuid.uuid4().hex
        return self._id

    # -- request data -------------------------------------------------------
    @property
    def path(self) -> str:
        return str(self.scope.get("path", ""))

    def header(self, name: str) -> str | None:
        """A request header by lower-case name, latin-1; ``None`` when absent.

        Repeated field lines are joined in order, as RFC 9110 section 5.3
        says (``"; "`` for Cookie, RFC 6265 section 5.4): a proxy's appended
        line is never hidden behind one the client wrote.
        """
        if self._headers is None:
            self._headers = joined_headers(self.scope.get("headers", ()))
        return self._headers.get(name)

    @property
    def query(self) -> dict[str, list[str]]:
        if self._query is None:
            raw = self.scope.get("query_string", b"")
            self._query = parse_qs(raw.decode("latin-1"), keep_blank_values=True)
        return self._query

    @property
    def subprotocols(self) -> list[str]:
        return list(self.scope.get("subprotocols") or ())

    @property
    def guard_close(self) -> Close | None:
        """The decision ws_guard closed this connection with, if it did."""
        return self._guard_close

    # -- deadlines ------------------------------------------------------------
    def call_at(self, when: float, callback: Any) -> Deadline:
        """Schedule *callback* on the guard's shared heap; cancelled at finish."""
        deadline = self.guard.scheduler.call_at(when, callback)
        if self._deadlines is None:
            self._deadlines = []
        self._deadlines.append(deadline)
        return deadline

    # -- handshake ------------------------------------------------------------
    async def handshake(self) -> bool:
        """Read ``websocket.connect`` and run admission; False when rejected."""
        message = await self._receive()
        if message["type"] != "websocket.connect":
            self.state = CLOSED  # the client left before the handshake finished
            return False
        self._connect_message = message
        guard = self.guard
        for rule in guard.connect_rules:
            rule.on_connect(self)
        refusal = guard.drain_refusal()
        if refusal is not None:
            await self._reject(refusal)
            return False
        for gauge in guard.gauges:
            verdict = gauge.check(self)
            if verdict is not None:
                if verdict.shadow:
                    self._record_shadow(verdict)
                else:
                    await self._reject(verdict)
                    return False
        for rule, holds in guard.admission_rules:
            if holds:
                # Held before the await: a handshake cancelled inside admit()
                # (the client left) still releases what admit() took so far.
                if self._held is None:
                    self._held = []
                self._held.append(rule)
            decision = await rule.admit(self)
            if decision is not None:
                if decision.shadow:
                    self._record_shadow(decision)
                else:
                    await self._reject(decision)
                    await self._release()
                    return False
        self.admitted = True
        self.opened_at = time.monotonic()
        guard.metrics.connection_opened()
        guard.connections.add(self)
        checks: list[Checker] = []
        for item in guard.check_plan:
            check = item.checker(self)
            if check is not None:
                checks.append(check)
        self._check = self._combine(checks)
        self.scope["ws_guard"] = ConnectionInfo(self)
        return True

    async def refuse(self, close: Close) -> None:
        """Read the handshake and close it with *close*, accepting first whatever ``reject`` says.

        For a fault of the server's found before admission (a feature the
        backend cannot run): not a client's refusal, so never an HTTP denial.
        """
        message = await self._receive()
        if message["type"] != "websocket.connect":
            self.state = CLOSED  # the client left before the handshake finished
            return
        self.state = GUARD_CLOSED
        self._guard_close = close
        self.guard.metrics.handshakes_rejected += 1
        self.guard.record_close(self, close)
        await self._accept_and_close(close)

    def check_message(self, message: Message) -> Verdict:
        """Every message check's decision on *message* (off the fast path)."""
        check = self._check
        return None if check is None else check(message)

    def _combine(self, checks: list[Checker]) -> Checker | None:
        if not checks:
            return None
        return checks[0] if len(checks) == 1 else self._chain(tuple(checks))

    def _chain(self, checks: tuple[Checker, ...]) -> Checker:
        """Several checks as one: the first enforced breach or a consume ends it."""
        record_shadow = self._record_shadow

        def chain(message: Message) -> Verdict:
            for check in checks:
                verdict = check(message)
                if verdict is None:
                    continue
                if verdict is not CONSUME and cast(Close, verdict).shadow:
                    record_shadow(cast(Close, verdict))
                    continue
                return verdict
            return None

        return chain

    async def _reject(self, close: Close) -> None:
        guard = self.guard
        self.state = GUARD_CLOSED
        self._guard_close = close
        guard.metrics.handshakes_rejected += 1
        if guard.reject == "http" and "websocket.http.response" in self.scope.get("extensions", {}):
            status, headers = guard.http_denial(close)
            # Counted as what the client got: the HTTP status, under the rule.
            guard.record_close(self, close, status=status)
            await self._send_quietly(
                {"type": "websocket.http.response.start", "status": status, "headers": headers}
            )
            await self._send_quietly(
                {"type": "websocket.http.response.body", "body": close.wire_reason.encode()}
            )
            return
        guard.record_close(self, close)
        # A close before accept becomes an HTTP 403 that browsers report as
        # 1006; accepting first is the only way the code reaches a browser.
        await self._accept_and_close(close)

    # -- the app's receive/send -------------------------------------------------
    async def receive(self) -> Message:
        # The message path: open before and after the wait, a data message the
        # checks pass. Everything else goes to _receive_slow. The server's
        # receive is read into a local first: calling it straight off the
        # slot is a method lookup the interpreter cannot specialise. Early
        # returns keep every jump short: CPython 3.11 leaves a comparison
        # unspecialised when its jump needs an EXTENDED_ARG.
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

    def client_closed(self, message: Message) -> None:
        """The server reported the client's ``websocket.disconnect``: count it once."""
        if self.state in LIVE:
            self._set_closed(CLOSED)
            self.guard.record_close(self, None, int(message.get("code", 1005)), "client")

    def send(self, message: Message) -> Awaitable[None]:
        # Not a coroutine: on the open path the server's own awaitable goes
        # straight back to the app, one frame less per message. ASGI apps
        # await a send at once, so checking the state here rather than at the
        # await is the same thing; a gone client is classified in app_crashed.
        if self.state == OPEN and message["type"] == "websocket.send":
            server_send = self._send  # a local: see receive()
            return server_send(message)
        return self._send_slow(message)

    async def _send_slow(self, message: Message) -> None:
        state = self.state
        if state == OPEN:
            if message["type"] == "websocket.close":
                message = self._app_closed(message)
            try:
                await self._send(message)
            except OSError:
                self._client_gone()
                raise
            return
        if state == GUARD_CLOSED:
            self.guard.metrics.dropped_sends += 1
            return
        gate = self._gate
        if state == AUTHENTICATING and gate is not None:
            if message["type"] == "websocket.close":
                # Not held: the app chose to end, and a close frame carries only
                # its own code and reason. What it sent before is dropped.
                await self._send(self._app_closed(message))
                return
            await gate.send(message)  # until the verdict; then in order, or dropped
            return
        if state == CONNECTING:
            kind = message["type"]
            if kind == "websocket.accept":
                for rule in self.guard.accept_rules:
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
                for rule in self.guard.open_rules:
                    rule.on_open(self)
                if gate is not None and self.state == AUTHENTICATING:
                    gate.start()
                return
            if kind == "websocket.close":
                message = self._app_closed(message)
            elif kind == "websocket.http.response.start":
                self._app_refused(message)
        await self._send(message)

    def _app_closed(self, message: Message) -> Message:
        """Count the app's ``websocket.close``; the message to hand to the server.

        Before accept nothing goes on the wire but the server's HTTP 403, so
        the message passes untouched and is counted as 403. After accept the
        close frame must be valid: a reason is cut to 123 bytes (a longer one
        makes uvicorn drop the TCP connection, 1006), and a code RFC 6455 does
        not allow in a frame (1005, 1006, 2000, ...) is replaced, since servers
        drop TCP (websockets) or send another code (wsproto: 1000) for it; see
        :func:`sendable_code_for`. The code counted is the one sent.
        """
        accepted = self.state != CONNECTING
        self._set_closed(CLOSED)
        if not accepted:
            self.guard.record_close(self, None, HTTP_FORBIDDEN, "app")
            return message
        reason = message.get("reason")
        if isinstance(reason, str) and reason:
            message["reason"] = truncate_reason(reason)
        # What ws_guard cannot read goes to the server untouched (FastAPI's
        # validation close carries a list as its reason; an app may pass a
        # None code): bookkeeping must never raise inside the app's send().
        code = message.get("code", NORMAL)
        if not isinstance(code, int) or isinstance(code, bool):
            counted = NORMAL
        elif is_sendable_code(code):
            counted = int(code)
        else:
            counted = sendable_code_for(code)
            self.guard.warn_unsendable_code(code, counted)
            message = {**message, "code": counted}
        self.guard.record_close(self, None, counted, "app")
        return message

    def _app_refused(self, message: Message) -> None:
        """The app answered the handshake with its own HTTP response: count its status."""
        self._set_closed(CLOSED)
        status = message.get("status")
        if isinstance(status, int) and not isinstance(status, bool) and 100 <= status <= 599:
            self.guard.record_close(self, None, status, "app")

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

    def _set_closed(self, state: int) -> None:
        """Enter CLOSED or GUARD_CLOSED; sends held for a token are dropped."""
        self.state = state
        gate = self._gate
        if gate is not None:
            gate.shut()

    # -- hooks for rules ----------------------------------------------------------
    def hold_until_verified(self) -> None:
        """Hold the app's sends after its accept until :meth:`verified` (first-message auth).

        Called at admission. Until the verdict ws_guard reads the client's
        messages itself; see _core/auth_gate.py for what the app sees.
        """
        if self._gate is None:
            self._gate = AuthGate(self)

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
            self.close_soon(Close(INTERNAL_ERROR, "internal_error", "internal_error"))
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

        Only while the connection is open; returns False when it is not. The
        state is checked again when the frame goes out, so a close in between
        drops it rather than sending after a close frame.
        """
        if self.state != OPEN:
            return False
        task = spawn(self._send_if_open(message))
        if self._asides is None:
            self._asides = set()
        self._asides.add(task)
        task.add_done_callback(self._asides.discard)
        return True

    async def _send_if_open(self, message: Message) -> None:
        if self.state == OPEN:
            await self._send_quietly(message)

    # -- closing ---------------------------------------------------------------
    def close_soon(self, close: Close) -> None:
        """Close from outside the message path (a deadline, a drain, a shed)."""
        if close.shadow:
            self._record_shadow(close)
            return
        if self.state in LIVE:
            self._mark_guard_closed(close)
            frame = {"type": "websocket.close", "code": close.code, "reason": close.wire_reason}
            self._close_task = spawn(self._send_quietly(frame))
        elif self.state == CONNECTING and self.admitted:
            self._mark_guard_closed(close)
            self._close_task = spawn(self._accept_and_close(close))

    async def close(self, close: Close) -> None:
        """Close now and wait until the close frame is handed to the server."""
        self.close_soon(close)
        task = self._close_task
        if task is not None:
            await wait_done(task)
            if not task.cancelled():
                task.result()  # a bug in sending it is raised here, as awaiting it did

    async def _close_open(self, close: Close) -> None:
        self._mark_guard_closed(close)
        await self._send_quietly(
            {"type": "websocket.close", "code": close.code, "reason": close.wire_reason}
        )

    async def _accept_and_close(self, close: Close) -> None:
        accept: Message = {"type": "websocket.accept"}
        for rule in self.guard.accept_rules:
            rule.on_accept(self, accept)  # e.g. the subprotocol a browser insists on
        if await self._send_quietly(accept):
            await self._send_quietly(
                {"type": "websocket.close", "code": close.code, "reason": close.wire_reason}
            )

    def _mark_guard_closed(self, close: Close) -> None:
        self._guard_close = close
        self._set_closed(GUARD_CLOSED)
        self.guard.record_close(self, close)
        timeout = self.guard.app_exit_timeout
        if timeout is not None and self.task is not None:
            self.call_at(self.guard.scheduler.now() + timeout, self._cancel_app)

    def _cancel_app(self) -> None:
        """The app outlived its connection by ``app_exit_timeout``: stop it.

        Sends after a guard close are dropped, so a handler that never calls
        ``receive()`` would run forever. The middleware absorbs this cancel,
        so the server sees an ordinary return.
        """
        task = self.task
        if self._finished or task is None or (isinstance(task, asyncio.Task) and task.done()):
            return
        self.cancelled_by_guard = True
        logger.info(
            "ws_guard cancelled an app handler still running %.1f s after its connection "
            "was closed (code=%d) path=%s",
            self.guard.app_exit_timeout or 0.0,
            self._guard_close.code if self._guard_close is not None else 0,
            loggable_path(self.path),
        )
        task.cancel()

    def _client_gone(self) -> None:
        """The server refused an app send because the client left (ClientDisconnected).

        Counted as the client's abnormal close, so the app's resulting
        exception is not mistaken for an app crash (1011).
        """
        if self.state in LIVE:
            self._set_closed(CLOSED)
            self.guard.record_close(self, None, ABNORMAL_CLOSURE, "client")

    def _disconnect_message(self) -> Message:
        close = cast(Close, self._guard_close)  # only called after a guard close
        return {"type": "websocket.disconnect", "code": close.code, "reason": close.wire_reason}

    def _record_shadow(self, close: Close) -> None:
        self.guard.record_shadow(self, close)

    async def _send_quietly(self, message: Message) -> bool:
        """Send a frame of ws_guard's own; False when the server would not take it.

        A gone client is not an error: servers raise ``OSError`` for it
        (uvicorn's ``ClientDisconnected``), and uvicorn's websockets-sansio
        stack raises ``RuntimeError`` once it has closed the connection itself
        (answering the client's close, or on a keepalive ping timeout).
        """
        try:
            await self._send(message)
        except (OSError, RuntimeError):
            return False
        return True

    # -- ends of the app ----------------------------------------------------------
    async def app_crashed(self, exc: BaseException) -> None:
        """The app raised: the client gets 1011 instead of a dropped TCP (1006).

        Any exception counts, ``WebSocketDisconnect`` too: an app raises it
        itself (on a bad token, say) while the client is still there. The
        client's 1006 is counted only when the client is known to be gone:
        ws_guard saw its ``websocket.disconnect`` (the state is no longer
        live), or the server refused a send (``ClientDisconnected``, also
        behind Starlette's ``WebSocketDisconnect``), or it refuses this close.
        """
        if self.state in LIVE:
            self._set_closed(CLOSED)
            close = Close(INTERNAL_ERROR, "internal_error", "internal_error")
            frame = {"type": "websocket.close", "code": close.code, "reason": close.wire_reason}
            if _server_refused_send(exc):
                # A send the app made on the fast path (not seen by ws_guard) hit a gone client.
                self.guard.record_close(self, None, ABNORMAL_CLOSURE, "client")
            elif await self._send_quietly(frame):
                self.guard.record_close(self, close, initiator="app")
            else:  # the server refused the close: the client is gone
                self.guard.record_close(self, None, ABNORMAL_CLOSURE, "client")

    async def app_returned(self) -> None:
        """The app returned while open: close normally rather than drop TCP.

        Counted as what happened: the app's 1000 when the close went out, the
        client's 1006 when the server refused it (the client left, and the
        app, having caught its own failed send, returned normally).
        """
        if self.state in LIVE:
            self._set_closed(CLOSED)
            if await self._send_quietly({"type": "websocket.close", "code": NORMAL, "reason": ""}):
                self.guard.record_close(self, None, NORMAL, "app")
            else:
                self.guard.record_close(self, None, ABNORMAL_CLOSURE, "client")

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
        with anyio.CancelScope(shield=True):
            await self._finish()

    async def _finish(self) -> None:
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
        await self._release()
        if self.admitted:
            self.guard.connections.discard(self)
            self.guard.metrics.connection_finished(time.monotonic() - self.opened_at)
        if close_task is not None and close_task.done() and not close_task.cancelled():
            close_task.result()  # a bug in sending it is raised, after the releases

    async def _release(self) -> None:
        held, self._held = self._held, None
        if held is None:
            return
        for rule in reversed(held):
            try:
                await rule.release(self)
            except Exception:
                logger.exception("ws_guard rule %r failed to release a connection", rule)
