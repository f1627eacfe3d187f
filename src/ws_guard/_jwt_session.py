"""One connection's authentication: its deadlines and its in-band messages.

A session is a few slots per connection. Its deadlines live on the guard's
shared heap: the expiry (``exp + leeway``), an optional "expiring" notice
before it, or the first-message timeout. Expiry is a wall-clock time (the
JWT's ``exp``); the scheduler runs on the loop's clock, so the remaining
time is converted at the moment the deadline is set.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, cast

from ._close import CONSUME, Close, Consume
from ._errors import ConfigurationError
from ._jwks import KeyState
from ._parse import Unreadable, read_json
from ._pending import WaitingRoom
from ._scheduler import Deadline
from ._types import Message

if TYPE_CHECKING:
    from ._connection import Connection
    from ._jwt import JWTAuth, Outcome

logger = logging.getLogger("ws_guard")

#: Room around the token in a JSON first or refresh message.
ENVELOPE_BYTES = 1024
#: The type of the optional notice sent before expiry.
EXPIRING_TYPE = "auth.expiring"
#: Finds the token in an in-band refresh message; ``None`` for any other message.
RefreshMatcher = Callable[[Message], "str | None"]


class Session:
    """The per-connection state of a :class:`JWTAuth` rule."""

    __slots__ = ("conn", "deadline", "marker", "notice", "pending", "rule", "token", "waiting")

    def __init__(self, rule: JWTAuth, conn: Connection) -> None:
        self.rule = rule
        self.conn = conn
        #: The handshake's token, between ``on_connect`` and ``admit`` only.
        self.token: str | None = None
        #: The client offered the subprotocol marker; the accept must name it.
        self.marker = False
        #: Waiting for the first message to carry the token.
        self.pending = False
        #: The key this connection is counted under while it waits (rule.waiting).
        self.waiting: str | None = None
        self.deadline: Deadline | None = None
        self.notice: Deadline | None = None

    # -- state ------------------------------------------------------------------
    def apply(self, claims: dict[str, Any]) -> None:
        """Make verified *claims* the connection's identity."""
        conn = self.conn
        subject = claims.get("sub")
        conn.subject = subject if isinstance(subject, str) else None
        # Interned names: 10 000 connections share one "sub", one "exp", ...
        conn.claims = MappingProxyType({sys.intern(k): v for k, v in claims.items()})

    @property
    def expires(self) -> float | None:
        """Wall-clock time (epoch seconds) at which the token stops being valid."""
        claims = self.conn.claims
        exp = None if claims is None else claims.get("exp")
        # PyJWT truncates exp to an int and calls a token expired at exp + leeway.
        return None if exp is None else int(exp) + self.rule.leeway

    def wait(self, key: str) -> None:
        """Admitted without a token: wait for the first message, counted under *key*."""
        self.pending = True
        self.waiting = key
        cast(WaitingRoom, self.rule.waiting).enter(key)
        self.conn.guard.metrics.pending_auth += 1

    def stop_waiting(self) -> None:
        """No longer waiting (the message came, the timeout fired, or the end): uncount once."""
        key, self.waiting = self.waiting, None
        if key is not None:
            cast(WaitingRoom, self.rule.waiting).leave(key)
            self.conn.guard.metrics.pending_auth -= 1

    # -- deadlines ----------------------------------------------------------------
    def start(self) -> None:
        """The app accepted: start the first-message timeout or the expiry clock."""
        first = self.rule.first_message
        if self.pending and first is not None:
            scheduler = self.conn.guard.scheduler
            self.deadline = scheduler.call_at(scheduler.now() + first.timeout, self._timed_out)
        else:
            self.arm()

    def arm(self) -> None:
        self.disarm()
        expires = self.expires
        if expires is None:
            return
        scheduler = self.conn.guard.scheduler
        now = scheduler.now()
        when = now + (expires - time.time())
        self.deadline = scheduler.call_at(when, self._expired)
        notice = self.rule.expiring_notice
        if notice is not None and when - notice > now:
            self.notice = scheduler.call_at(when - notice, self._warn)

    def disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        if self.notice is not None:
            self.notice.cancel()
            self.notice = None

    def _expired(self) -> None:
        self.deadline = None
        self.disarm()
        self.conn.close_soon(self.rule.expired)

    def _timed_out(self) -> None:
        self.deadline = None
        self.stop_waiting()
        close = self.rule.missing
        if close.shadow:
            self.pending = False  # shadow mode: stop waiting, let messages through
        self.conn.close_soon(close)

    def _warn(self) -> None:
        self.notice = None
        deadline = self.deadline
        if deadline is None:
            return
        left = max(0, round(deadline.when - self.conn.guard.scheduler.now()))
        text = json.dumps({"type": EXPIRING_TYPE, "in": left})
        self.conn.send_soon({"type": "websocket.send", "text": text})

    # -- messages -----------------------------------------------------------------
    def check(self, message: Message) -> Close | Consume | None:
        """The per-message check: a substring test unless the message is for us."""
        if self.pending:
            return self._first_message(message)
        match = self.rule.refresh_token
        if match is None:
            return None
        try:
            token = match(message)
        except Exception:
            # Only a matcher of the user's own can raise (the built-in one
            # never does): a bug in it, so 1011, with its traceback, once.
            logger.exception("ws_guard: the JWTAuth refresh matcher raised")
            return self.rule.failed
        if token is None:
            return None
        outcome = self.rule.verify_now(token)
        if outcome is KeyState.FETCH:
            self.conn.hold(self._refresh_later(token))
            return CONSUME
        return self._sync(self._settle_refresh(outcome))

    def _first_message(self, message: Message) -> Close | Consume | None:
        self.pending = False
        self.stop_waiting()
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        rule = self.rule
        payload = message.get("text")
        if payload is None:
            payload = message.get("bytes") or b""
        if len(payload) > rule.max_token_bytes + ENVELOPE_BYTES:
            return self._sync(rule.invalid)  # never parse a huge message as JSON
        first = rule.first_message
        token = None if first is None else first.parse(message)
        if token is None:
            return self._sync(rule.missing)
        if isinstance(token, Unreadable):
            return self._sync(rule.invalid)
        outcome = rule.verify_now(token)
        if outcome is KeyState.FETCH:
            self.conn.hold(self._first_later(token))
            return CONSUME
        return self._sync(self._settle_first(outcome))

    async def _refresh_later(self, token: str) -> Close | None:
        return self._settle_refresh(await self.rule.verify(token, self.conn.guard))

    async def _first_later(self, token: str) -> Close | None:
        return self._settle_first(await self.rule.verify(token, self.conn.guard))

    def _settle_first(self, outcome: Outcome) -> Close | None:
        if isinstance(outcome, KeyState):
            return self.rule.handshake_close(outcome, self.conn.guard)
        if isinstance(outcome, Close):
            return outcome
        self.apply(outcome)
        self.arm()
        self.conn.verified()  # held app sends go out now, in order
        return None

    def _settle_refresh(self, outcome: Outcome) -> Close | None:
        rule = self.rule
        if isinstance(outcome, KeyState):
            # Keys unreachable: under "allow" the connection keeps its current
            # deadline (a key-server outage closes nothing that could go on).
            return None if self.conn.guard.on_storage_error == "allow" else rule.unavailable
        if isinstance(outcome, Close):
            return rule.invalid
        subject = outcome.get("sub")
        if subject != self.conn.subject:
            return rule.invalid  # a refresh may extend a session, never switch users
        self.apply(outcome)
        self.arm()
        return None

    def _sync(self, close: Close | None) -> Close | Consume:
        """A decision on a message ws_guard consumed: the message never reaches the app."""
        if close is None:
            return CONSUME
        if close.shadow:
            self.conn.close_soon(close)  # counts and logs the breach, closes nothing
            return CONSUME
        return close


def refresh_matcher(
    refresh: str | RefreshMatcher | None, field: str, max_token_bytes: int
) -> RefreshMatcher | None:
    """The function that finds the token in a refresh message, or ``None`` in any other."""
    if refresh is None or callable(refresh):
        return refresh
    if not isinstance(refresh, str) or not refresh:
        raise ConfigurationError(
            f"JWTAuth refresh must be a message type, a callable or None, not {refresh!r}"
        )
    if not isinstance(field, str) or not field:
        raise ConfigurationError(f"JWTAuth refresh_field must be a name, not {field!r}")
    needle = json.dumps(refresh)  # '"auth.refresh"': the cheap prefilter
    envelope = max_token_bytes + ENVELOPE_BYTES  # bigger: app content, not a refresh

    def match(message: Message) -> str | None:
        text = message.get("text")
        if text is None or needle not in text or len(text) > envelope:
            return None
        value = read_json(text)
        if value is Unreadable.NOT_JSON:
            return None  # mentions the type, is no JSON: app content
        if value is Unreadable.REFUSED:
            return ""  # JSON naming the refresh type that cannot be read: token_invalid
        if not isinstance(value, dict) or value.get("type") != refresh:
            return None
        token = value.get(field)
        return token if isinstance(token, str) else ""  # a refresh without a token

    return match
