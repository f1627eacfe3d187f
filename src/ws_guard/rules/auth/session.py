"""One connection's authentication: its deadlines and its in-band messages.

A session is a few slots per connection. Its deadlines live on the guard's
shared heap: the expiry (``exp + leeway``), an optional "expiring" notice
before it, or the first-message timeout. Expiry is a wall-clock time (the
JWT's ``exp``); the scheduler runs on the loop's clock, so the remaining
time is converted at the moment the deadline is set.

An in-band refresh costs a signature check (PyJWT: 34-95 us), so it passes
the cheap tests first: the rule's own ``refresh_rate``, then every
``MessageRate`` of the connection (a refresh is a message), and only then
is its signature checked. A verified refresh must name the same principal,
``(iss, sub)``, and move the expiry forward.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, cast

from ws_guard._core.decisions import CONSUME, Close, Consume
from ws_guard._core.scheduler import Deadline
from ws_guard._json import Unreadable
from ws_guard.rules.auth.key_state import KeyState
from ws_guard.rules.auth.refresh_matcher import ENVELOPE_BYTES
from ws_guard.rules.auth.waiting_room import WaitingRoom
from ws_guard.rules.context import Checker
from ws_guard.rules.keys import by_user, user_key
from ws_guard.rules.limits.leases import CountedWindow
from ws_guard.types import Message

if TYPE_CHECKING:
    from ws_guard.rules.auth.auth_rule import AuthRule, Outcome
    from ws_guard.rules.context import RuleContext

logger = logging.getLogger("ws_guard")

#: The type of the optional notice sent before expiry.
EXPIRING_TYPE = "auth.expiring"
#: The latest expiry kept (epoch seconds, the end of year 9999): a later
#: ``exp`` is read as this one, which a float holds exactly.
LATEST_EXPIRY = 253_402_300_799


class Session:
    """The per-connection state of a :class:`JWTAuth` rule."""

    __slots__ = (
        "conn",
        "deadline",
        "marker",
        "notice",
        "pending",
        "quiet_until",
        "rates",
        "refreshes",
        "rule",
        "token",
        "waiting",
    )

    def __init__(self, rule: AuthRule, conn: RuleContext) -> None:
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
        #: The connection's ``MessageRate`` checks: a refresh counts in each
        #: (added by the rate rules when they set up the connection).
        self.rates: tuple[Checker, ...] = ()
        #: The ``refresh_rate`` windows, made at the first refresh.
        self.refreshes: list[CountedWindow] | None = None
        #: Shadow mode: the refresh-limit breach is reported once per window.
        self.quiet_until = float("-inf")

    # -- state ------------------------------------------------------------------
    def apply(self, claims: dict[str, Any]) -> None:
        """Make verified *claims* the connection's identity."""
        conn = self.conn
        subject = claims.get("sub")
        conn.subject = subject if isinstance(subject, str) else None
        # Interned names: 10 000 connections share one "sub", one "exp", ...
        conn.claims = MappingProxyType({sys.intern(k): v for k, v in claims.items()})

    def revocation(self, claims: dict[str, Any]) -> Close | None:
        """1008 ``token_revoked`` when verified *claims* carry a revoked ``jti`` or ``sub``.

        One lookup in this process's revocations (``guard.revoke()``, and
        with Redis those heard from other processes). In shadow mode the
        breach is counted and logged here and ``None`` returned: the token
        is used as if it were not revoked.
        """
        revoked = self.conn.guard.revocations.revoked(claims.get("jti"), claims.get("sub"))
        return self._revoked(revoked)

    async def handshake_revocation(self, claims: dict[str, Any]) -> Close | None:
        """:meth:`revocation`, then with Redis one shared lookup (``EXISTS``).

        A failed Redis call follows ``on_storage_error``: ``"allow"`` keeps
        this process's answer, ``"deny"`` refuses with 1013
        ``storage_unavailable``.
        """
        guard = self.conn.guard
        jti, subject = claims.get("jti"), claims.get("sub")
        store = guard.revocations
        revoked = store.revoked(jti, subject)
        if not revoked and store.remote is not None:
            shared = await store.remote(jti, subject)
            if shared is None and guard.on_storage_error != "allow":
                return self.rule.unavailable
            revoked = bool(shared)
        return self._revoked(revoked)

    def _revoked(self, revoked: bool) -> Close | None:
        if not revoked:
            return None
        close = self.rule.revoked
        if close.shadow:
            self.conn.close_soon(close)  # counts and logs the breach, closes nothing
            return None
        return close

    @property
    def expires(self) -> float | None:
        """Wall-clock time (epoch seconds) at which the token stops being valid."""
        claims = self.conn.claims
        exp = None if claims is None else claims.get("exp")
        return None if exp is None else self._expiry(exp)

    def _expiry(self, exp: Any) -> float:
        """``exp + leeway`` as PyJWT reads it, with ``exp`` no later than :data:`LATEST_EXPIRY`.

        PyJWT truncates ``exp`` to an int and calls a token expired at
        ``exp + leeway``. An issuer may sign any integer (``10**400``), which
        no float holds; capped, it still never expires in practice.
        """
        return min(int(exp), LATEST_EXPIRY) + float(self.rule.leeway)

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
        # Up to the next millisecond: the two clock reads differ by a few
        # hundred nanoseconds from call to call, and connections with the
        # same exp would otherwise each come in a hair earlier than the
        # armed timer and replace it (a loop timer made and cancelled per
        # handshake). On the grid they share one; the close is at most 1 ms
        # later, within the loop's own timer resolution (libuv: 1 ms).
        when = math.ceil((now + (expires - time.time())) * 1000.0) / 1000.0
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
        # Rates first, signature after: a flood of refreshes costs no crypto.
        refused = self._count_refresh(message)
        if refused is not None:
            return self._sync(refused)
        outcome = self.rule.verify_now(token)
        if outcome is KeyState.FETCH:
            self.conn.hold(self._refresh_later(token))
            return CONSUME
        return self._sync(self._settle_refresh(outcome))

    def _count_refresh(self, message: Message) -> Close | None:
        """The refresh's own limit, then the connection's message rates; plain arithmetic.

        Shadow breaches are reported (the limit's once per window, a rate's
        as the rate reports them) and the refresh goes on.
        """
        conn = self.conn
        t = conn.guard.scheduler.clock()
        windows = self.refreshes
        if windows is None:
            windows = self.refreshes = [
                CountedWindow(r.limit, r.window) for r in self.rule.refresh_rates
            ]
        wait: float | None = None
        for window in windows:
            retry = window.take(t)
            if retry is not None and (wait is None or retry > wait):
                wait = retry
        if wait is not None:
            close = self.rule.refresh_limited(wait)
            if not close.shadow:
                return close
            if t >= self.quiet_until:
                self.quiet_until = t + wait
                conn.close_soon(close)  # counts and logs the breach, closes nothing
        for rate in self.rates:
            verdict = rate(message)
            if isinstance(verdict, Close):
                if not verdict.shadow:
                    return verdict
                conn.close_soon(verdict)
        return None

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
        refusal = self.revocation(outcome)
        if refusal is not None:
            return refusal
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
        conn = self.conn
        subject = conn.subject
        # A refresh may extend a session, never switch principals: the same
        # sub from the same issuer, compared as by_user keys them. Without a
        # sub there is nothing to compare.
        if subject is None or outcome.get("sub") != subject:
            return rule.invalid
        if user_key(outcome.get("iss"), subject) != by_user(conn):
            return rule.invalid
        refusal = self.revocation(outcome)
        if refusal is not None:
            return refusal
        if not self._extends(outcome):
            return rule.stale  # a replayed or older token buys nothing
        self.apply(outcome)
        self.arm()
        return None

    def _extends(self, claims: dict[str, Any]) -> bool:
        """Whether verified *claims* expire later than the current token (no ``exp``: never)."""
        current = self.expires
        if current is None:
            return False  # a token without exp never expires: nothing to extend
        exp = claims.get("exp")
        # PyJWT checked that int(exp) works; it compares exp as an int too.
        return exp is None or self._expiry(exp) > current

    def _sync(self, close: Close | None) -> Close | Consume:
        """A decision on a message ws_guard consumed: the message never reaches the app."""
        if close is None:
            return CONSUME
        if close.shadow:
            self.conn.close_soon(close)  # counts and logs the breach, closes nothing
            return CONSUME
        return close


def refresh_session(conn: RuleContext) -> Session | None:
    """*conn*'s session when it takes in-band refreshes, else ``None``.

    A message rate that sets up *conn* adds its check to ``session.rates``,
    so refreshes, which the session consumes before any rate sees them,
    still count as messages.
    """
    for rule in conn.guard.rules:
        # Read only with an auth rule: a connection's extra is made on first use.
        if rule.provides_subject:
            session = conn.extra.get(rule)
            if isinstance(session, Session) and session.rule.refresh_token is not None:
                return session
    return None
