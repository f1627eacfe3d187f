"""The connection's data: its slots, request accessors, state and frames of its own.

Everything the other layers of the connection (closing, admission, holds,
the receive/send state machine) share; see ``_core/connection.py``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qs

import anyio

from ws_guard._core.decisions import Close
from ws_guard._core.request import joined_headers
from ws_guard._core.rule_state import EMPTY, RuleState
from ws_guard._core.states import CONNECTING
from ws_guard._core.twins import refuses_close_code, twin_code
from ws_guard.rules.keys import resolve_client_ip
from ws_guard.types import Message, Receive, Scope, Send

if TYPE_CHECKING:
    from ws_guard._core.asides import Asides
    from ws_guard._core.auth_gate import AuthGate
    from ws_guard._core.fast_path import RunState
    from ws_guard._core.guard import Guard
    from ws_guard._core.scheduler import Deadline
    from ws_guard._core.send_watch import SendWatch
    from ws_guard._core.tasks import Job
    from ws_guard.rules.base import Rule
    from ws_guard.rules.context import Checker, RuleContext

#: Length of a connection's deadline list at which fired and cancelled
#: entries are dropped (each ``call_at`` past it scans the few left).
_PRUNE_AT = 8


def close_frame(code: int, reason: str) -> Message:
    """The ASGI ``websocket.close`` message ws_guard sends: *code*, *reason* as given.

    The one place such a message is built; *reason* is already cut to 123
    bytes (``Close.wire_reason``, ``truncate_reason``). A server that
    refuses the RFC code gets its private-range twin instead, from
    :meth:`ConnectionBase._send_close`.
    """
    return {"type": "websocket.close", "code": code, "reason": reason}


class MessageCounts:
    """One connection's data messages, in and out (``Guard(count_messages=True)``)."""

    __slots__ = ("received", "sent")

    def __init__(self) -> None:
        self.received = 0
        self.sent = 0


class ConnectionBase:
    """One guarded WebSocket's state; the layers above add what it does."""

    __slots__ = (
        "_asides",
        "_check",
        "_client_ip",
        "_close_task",
        "_connect_message",
        "_counts",
        "_deadlines",
        "_finished",
        "_gate",
        "_guard_close",
        "_headers",
        "_held",
        "_hold",
        "_id",
        "_lead",
        "_peer",
        "_query",
        "_receive",
        "_send",
        "_sends",
        "_state_key",
        "_state_more",
        "_state_value",
        "_twins",
        "admitted",
        "cancelled_by_guard",
        "claims",
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
        host = client[0] if isinstance(client, (tuple, list)) and client else None
        # ASGI says [host, port] with a str host; anything else (bytes or an
        # int from a custom server, a bare string) is no address, like a Unix
        # socket, so parsing it on first read (a rule, a log line, a listing)
        # cannot raise there.
        self._peer: str | None = host if isinstance(host, str) else None
        # Without trusted proxies the address is the peer's alone, parsed on
        # first read (see client_ip): most connections end without a rule, a
        # log line or a hook that reads it. Behind proxies it is resolved
        # now, from the headers as the server gave them.
        self._client_ip: str | None = None
        if guard.trusted_proxies:
            self._client_ip = resolve_client_ip(
                self._peer, self.header("x-forwarded-for"), guard.trusted_proxies
            )
        self.subject: str | None = None
        self.claims: Mapping[str, Any] | None = None
        # The rules' state (see _core/rule_state.py): one entry in slots, more in a dict.
        self._state_key: Any = EMPTY
        self._state_value: Any = EMPTY
        self._state_more: dict[Any, Any] | None = None
        self.admitted = False
        self.opened_at = 0.0
        #: Data messages the app received and sent, when the guard counts
        #: them (``Guard(count_messages=True)``; see Connection.counted).
        self._counts: MessageCounts | None = None
        #: The message checks: one rule's (or fused run's) checker, or a chain.
        self._check: Checker | None = None
        #: The state of the plan's leading fused run, when it leads (its
        #: ``check`` is then ``_check``): Connection.app_receive reads it.
        self._lead: RunState | None = None
        self._connect_message: Message | None = None
        self._guard_close: Close | None = None
        self._close_task: Job[Any] | None = None
        # Created on first use: most connections never need them, and an idle
        # connection's footprint is what 10 000 of them multiply.
        self._deadlines: list[Deadline] | None = None
        self._held: list[Rule] | None = None
        self._hold: Job[Close | None] | None = None
        #: ws_guard's own frames (notices) and their task (_core/asides.py).
        self._asides: Asides | None = None
        #: The app's pending sends, with a rule that watches sends (_core/send_watch.py).
        self._sends: SendWatch | None = None
        #: Set at admission when a first-message token must be verified before
        #: the app's sends may reach the client (see _core/auth_gate.py).
        self._gate: AuthGate | None = None
        self._finished = False
        #: Whether the server refused an RFC close code on this connection:
        #: closes then go out as their twins (see _core/twins.py).
        self._twins = False
        #: What stops the app (set by the middleware): its task on asyncio, a
        #: cancel scope around it elsewhere; and whether ws_guard cancelled it
        #: because it ran on after a guard close.
        self.task: asyncio.Task[Any] | anyio.CancelScope | None = None
        self.cancelled_by_guard = False

    @property
    def messages_in(self) -> int | None:
        """Data messages the app received; ``None`` unless the guard counts them."""
        return None if self._counts is None else self._counts.received

    @property
    def messages_out(self) -> int | None:
        """Data messages the app sent; ``None`` unless the guard counts them."""
        return None if self._counts is None else self._counts.sent

    @property
    def full(self) -> RuleContext:
        """This object as rules and the guard see it: a :class:`RuleContext`.

        Every instance is a whole ``Connection``, which implements the protocol;
        the layers are only how its code is split.
        """
        return cast("RuleContext", self)

    @property
    def extra(self) -> MutableMapping[Any, Any]:
        """Per-connection state of the rules, keyed by the rule (an auth rule's session too)."""
        return RuleState(self)

    @property
    def id(self) -> str:
        """A random id, unique across processes (Redis connection slots use it).

        128 random bits from the OS as 32 hex characters: what ``uuid4().hex``
        gives without the ``uuid`` import (which loads ``platform``) and at a
        fifth of its cost per handshake.
        """
        if self._id is None:
            self._id = os.urandom(16).hex()
        return self._id

    @property
    def client_ip(self) -> str:
        """The address limits count, as :func:`~ws_guard.rules.keys.resolve_client_ip` gives it.

        Without trusted proxies, the peer from ``scope["client"]`` at the
        handshake, parsed on first read: ``ipaddress`` parsing was a fifth of
        the cost of a handshake through ``Guard()`` with no rules.
        """
        ip = self._client_ip
        if ip is None:
            ip = self._client_ip = resolve_client_ip(self._peer, None, ())
        return ip

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

    def call_at(self, when: float, callback: Any) -> Deadline:
        """Schedule *callback* on the guard's shared heap; cancelled at finish."""
        deadline = self.guard.scheduler.call_at(when, callback)
        deadlines = self._deadlines
        if deadlines is None:
            self._deadlines = [deadline]
            return deadline
        if len(deadlines) >= _PRUNE_AT:
            # A rule that re-arms (IdleTimeout) adds one per period: drop the
            # fired and cancelled ones, or a long-lived connection's list grows.
            deadlines[:] = [entry for entry in deadlines if not entry.cancelled]
        deadlines.append(deadline)
        return deadline

    def _set_closed(self, state: int) -> None:
        """Enter CLOSED or GUARD_CLOSED; sends held for a token are dropped."""
        self.state = state
        gate = self._gate
        if gate is not None:
            gate.shut()

    def _record_shadow(self, close: Close) -> None:
        self.guard.reporter.record_shadow(self.full, close)

    async def _send_quietly(self, message: Message) -> bool:
        """Send a frame of ws_guard's own; False when the server would not take it.

        A gone client is not an error: servers raise ``OSError`` for it
        (uvicorn's ``ClientDisconnected``), and uvicorn's websockets-sansio
        stack raises ``RuntimeError`` once it has closed the connection itself
        (answering the client's close, or on a keepalive ping timeout).
        """
        try:
            if message["type"] == "websocket.close":
                await self._send_close(message)
            else:
                await self._send(message)
        except (OSError, RuntimeError):
            return False
        return True

    async def _send_close(self, message: Message) -> None:
        """Send a ``websocket.close``; as its code's twin if the server refuses the code.

        daphne refuses every code but 1000 and 3000-4999 by raising from
        the send, before anything goes out (``_core/twins.py``); the first
        refusal switches this connection to twins, and the close is sent
        again as ``code + 3000`` with the same reason. The metrics and the
        app's ``websocket.disconnect`` keep the RFC code. Anything else the
        server raises propagates, as from a plain send.
        """
        code = message.get("code")
        if self._twins and isinstance(code, int):
            message = {**message, "code": twin_code(code)}
        try:
            await self._send(message)
        except Exception as exc:  # autobahn refuses with a bare Exception; others re-raise
            if self._twins or not refuses_close_code(exc, code):
                raise
            self._twins = True
            await self._send({**message, "code": twin_code(cast(int, code))})

    def _disconnect_message(self) -> Message:
        close = cast(Close, self._guard_close)  # only called after a guard close
        return {"type": "websocket.disconnect", "code": close.code, "reason": close.wire_reason}
