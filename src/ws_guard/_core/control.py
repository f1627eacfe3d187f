"""The control plane of one guard: list, disconnect (and, built on them, revoke and ban).

:class:`ControlPlane` is a base of :class:`ws_guard.Guard`: its methods are
the guard's (``guard.connections()``, ``await guard.disconnect(...)``). It
reads the guard's live set once per call and closes through each
connection's own ``close_soon``, the path a drain or a deadline takes, so a
disconnect is counted, logged and seen by the app like any guard close.
Nothing here runs per message.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

from ws_guard._core.bans import MAX_BAN, BanInfo
from ws_guard._core.decisions import Close
from ws_guard._core.listing import (
    ConnectionSnapshot,
    Selector,
    check_selector_value,
    snapshots,
)
from ws_guard._core.states import AUTHENTICATING, CONNECTING, OPEN
from ws_guard._validate import is_number
from ws_guard.codes import (
    GOING_AWAY,
    INTERNAL_ERROR,
    MAX_REASON_BYTES,
    NORMAL,
    POLICY_VIOLATION,
    REASON_DISCONNECTED,
    REASON_TOKEN_REVOKED,
    SERVICE_RESTART,
    TRY_AGAIN_LATER,
)
from ws_guard.errors import ConfigurationError

if TYPE_CHECKING:
    from ws_guard._core.bans import Bans
    from ws_guard._core.fanout import ControlChannel
    from ws_guard._core.revocations import Revocations
    from ws_guard._core.scheduler import Scheduler
    from ws_guard.metrics.snapshot import Metrics
    from ws_guard.rules.context import RuleContext

#: The rule label (``closes_by_rule``) of a ``guard.disconnect()`` close.
RULE_DISCONNECT = "disconnect"
#: A disconnect's decision with the default code and reason; each call
#: replaces the code and reason it was given.
DISCONNECTED = Close(POLICY_VIOLATION, REASON_DISCONNECTED, RULE_DISCONNECT, initiator="server")
#: What ``guard.revoke()`` closes the matching open connections with.
REVOKED = Close(POLICY_VIOLATION, REASON_TOKEN_REVOKED, REASON_TOKEN_REVOKED, initiator="server")
#: Seconds ahead a revocation may last: a year. Past it ``until`` is a unit
#: mistake (milliseconds since the epoch), not a plan.
MAX_REVOCATION = 366 * 86400.0
#: RFC 6455 section 7.4.1 codes a server may close with on its own decision:
#: a normal end, going away, policy, an internal error, restart, try later.
#: 1002/1003/1007/1009/1010 describe a frame the client sent, 1014 a gateway.
SERVER_CODES = frozenset(
    {NORMAL, GOING_AWAY, POLICY_VIOLATION, INTERNAL_ERROR, SERVICE_RESTART, TRY_AGAIN_LATER}
)
#: Admitted connections a disconnect may still close (as a drain does).
_CLOSABLE = (OPEN, AUTHENTICATING, CONNECTING)


def check_close_code(code: object) -> int:
    """A code a server-side close may carry: :data:`SERVER_CODES` or 3000-4999.

    Raises :class:`ConfigurationError` naming the bad value.
    """
    if isinstance(code, bool) or not isinstance(code, int):
        raise ConfigurationError(f"close code must be an int, not {code!r}")
    if code not in SERVER_CODES and not 3000 <= code <= 4999:
        raise ConfigurationError(
            f"close code must be one of {sorted(SERVER_CODES)} or 3000-4999, not {code!r}"
        )
    return code


def check_close_reason(reason: object) -> str:
    """A close reason of at most 123 bytes of UTF-8 (RFC 6455 section 5.5).

    Refused rather than cut: a caller's reason is a decision, and a cut one
    would reach clients unlike what the caller wrote.
    """
    if not isinstance(reason, str):
        raise ConfigurationError(f"close reason must be a string, not {reason!r}")
    try:
        size = len(reason.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate: no close frame can carry it
        raise ConfigurationError(f"close reason is not valid UTF-8 text: {reason!r}") from None
    if size > MAX_REASON_BYTES:
        raise ConfigurationError(
            f"close reason must be at most {MAX_REASON_BYTES} bytes of UTF-8, "
            f"not {size}: {reason[:40]!r}..."
        )
    return reason


def _check_ttl(ttl: object) -> float:
    """A published TTL: a positive number of seconds, at most :data:`MAX_REVOCATION`."""
    if not is_number(ttl) or not 0 < ttl <= MAX_REVOCATION:
        raise ConfigurationError(f"a control message's ttl must be positive seconds, not {ttl!r}")
    return float(ttl)


def check_until(until: object, now: float) -> float:
    """Seconds from *now* to *until* (both wall-clock); ConfigurationError when unusable."""
    if not is_number(until):
        raise ConfigurationError(
            f"until must be a time in seconds since the epoch (time.time()), not {until!r}"
        )
    ahead = float(until) - now
    if ahead <= 0:
        raise ConfigurationError(f"until must be later than now ({now:.0f}), not {until!r}")
    if ahead > MAX_REVOCATION:
        raise ConfigurationError(
            f"until must be at most a year ahead (seconds since the epoch), not {until!r}: "
            "milliseconds?"
        )
    return ahead


class ControlPlane:
    """``guard.connections()`` and ``guard.disconnect()``; a base of :class:`ws_guard.Guard`."""

    # Set by Guard.__init__.
    live_connections: set[RuleContext]
    ipv6_prefix: int
    metrics: Metrics
    scheduler: Scheduler
    revocations: Revocations
    ban_store: Bans
    channel: ControlChannel

    def connections(self) -> list[ConnectionSnapshot]:
        """This process's open connections, oldest first, as frozen copies.

        One :class:`ConnectionSnapshot` per admitted connection not yet
        closed: id, client address and key, subject, path, when it opened.
        No token or claim is copied. The cost is one small object per open
        connection, once per call; nothing is added to any message's path.
        """
        return snapshots(self.live_connections, self.ipv6_prefix)

    async def disconnect(
        self,
        *,
        subject: str | None = None,
        key: str | None = None,
        connection_id: str | None = None,
        code: int = POLICY_VIOLATION,
        reason: str = REASON_DISCONNECTED,
    ) -> int:
        """Close every open connection of this process that matches; return how many.

        A connection matches when every selector given matches (AND):
        *subject* the verified JWT ``sub``, *key* the address as
        ``rules.by_ip`` keys it (or the exact address), *connection_id* the
        connection's id. At least one is required.

        Each goes through the guard's close path: the client gets *code*
        and *reason* (accept-then-close for one admitted but not yet
        accepted), the app's ``receive()`` returns ``websocket.disconnect``
        with the same code, and the close is counted with initiator
        ``"server"`` and rule ``disconnect``. Returns once every close is
        under way; the frames go out on the connections' own tasks.

        Raises :class:`ConfigurationError` for no selector, an empty or
        non-string selector, a *code* outside 1000, 1001, 1008, 1011-1013
        and 3000-4999, or a *reason* over 123 bytes of UTF-8.
        """
        selector = Selector(subject=subject, key=key, connection_id=connection_id)
        if selector.empty:
            # No selector would match every connection: too easy to do by mistake.
            raise ConfigurationError(
                "disconnect needs at least one of subject=, key= or connection_id=; "
                "to close every connection use guard.drain()"
            )
        close = dataclasses.replace(
            DISCONNECTED, code=check_close_code(code), reason=check_close_reason(reason)
        )
        closed = self.close_matching(selector, close)
        if self.channel.active:
            await self.channel.publish(
                {
                    "op": "disconnect",
                    "subject": subject,
                    "key": key,
                    "connection_id": connection_id,
                    "code": close.code,
                    "reason": close.reason,
                }
            )
        return closed

    async def revoke(
        self, *, jti: str | None = None, subject: str | None = None, until: float
    ) -> int:
        """Refuse a token id (``jti``) or a subject (``sub``) until *until*; close its connections.

        *until* is wall-clock seconds since the epoch (a token's ``exp`` fits),
        later than now and at most a year ahead. Until then the auth rule
        refuses, with 1008 ``token_revoked``, a handshake or first-message
        token, and an in-band refresh, whose claims carry the revoked ``jti``
        or ``sub``: one lookup per handshake or refresh, none per message.
        Open connections that match (their current token's ``jti``, or their
        subject) are closed now with 1008 ``token_revoked``, counted with
        initiator ``"server"``; returns how many. Revocations live in this
        process's memory and are dropped once expired.

        Raises :class:`ConfigurationError` without *jti* or *subject*, for an
        empty or non-string one, or for *until* in the past or too far ahead.
        """
        selector = Selector(subject=subject, jti=jti)
        if jti is None and subject is None:
            raise ConfigurationError("revoke needs jti= or subject= (or both)")
        ttl = check_until(until, time.time())
        self.metrics.revocations += 1
        closed = self._revoke_here(selector.jti, selector.subject, ttl)
        if self.channel.active:
            await self.channel.store_revocation(jti, subject, ttl)
            await self.channel.publish({"op": "revoke", "jti": jti, "subject": subject, "ttl": ttl})
        return closed

    def _revoke_here(self, jti: str | None, subject: str | None, ttl: float) -> int:
        """Revoke in this process for *ttl* seconds and close the matching connections."""
        self.revocations.add(jti=jti, subject=subject, expires=self.scheduler.clock() + ttl)
        closed = 0
        # Either match is enough: a connection is closed once (close_matching
        # skips one already closed).
        if jti is not None:
            closed += self.close_matching(Selector(jti=jti), REVOKED)
        if subject is not None:
            closed += self.close_matching(Selector(subject=subject), REVOKED)
        return closed

    async def bans(self) -> list[BanInfo]:
        """The bans ``rules.AutoBan`` holds in force now, soonest end first.

        Each a frozen :class:`BanInfo`: ``key``, ``rule`` (the rule's id),
        ``until`` (wall-clock seconds) and ``shadow`` (a rule in shadow mode:
        listed, not refused).
        """
        return self.ban_store.listing()

    async def unban(self, key: str) -> int:
        """Lift every ``AutoBan`` ban of *key* now; how many were in force.

        The key's strikes start again from zero. Raises
        :class:`ConfigurationError` for an empty or non-string *key*.
        """
        check_selector_value("unban key", key)
        lifted = self.ban_store.lift(key)
        if self.channel.active:
            await self.channel.delete_bans(key)
            await self.channel.publish({"op": "unban", "key": key})
        return lifted

    # -- other processes (Redis storage; see _core/fanout.py) --------------------
    def announce_ban(self, rule: str, key: str, seconds: float, shadow: bool) -> None:
        """Tell the other processes of a ban made here (from a sync close hook)."""
        self.channel.ban_soon(rule, key, seconds, shadow)

    def announce_strike(self, rule: str, key: str) -> None:
        """Tell the other processes of a policy close ``AutoBan`` counted here (sync)."""
        self.channel.strike_soon(rule, key)

    def apply_remote(self, op: dict[str, Any]) -> None:
        """Apply an operation another process published; ValueError when malformed."""
        kind = op.get("op")
        if kind == "disconnect":
            selector = Selector(
                subject=op.get("subject"), key=op.get("key"), connection_id=op.get("connection_id")
            )
            if selector.empty:
                raise ConfigurationError("a disconnect message without a selector")
            close = dataclasses.replace(
                DISCONNECTED,
                code=check_close_code(op.get("code")),
                reason=check_close_reason(op.get("reason")),
            )
            self.close_matching(selector, close)
        elif kind == "revoke":
            selector = Selector(jti=op.get("jti"), subject=op.get("subject"))
            ttl = _check_ttl(op.get("ttl"))
            if op.get("load"):  # already in Redis at startup: no connection of ours yet
                self.revocations.add(
                    jti=selector.jti, subject=selector.subject, expires=self.scheduler.clock() + ttl
                )
            else:
                self._revoke_here(selector.jti, selector.subject, ttl)
        elif kind == "ban":
            rule, key = op.get("rule"), op.get("key")
            if not isinstance(rule, str) or not isinstance(key, str):
                raise ConfigurationError(f"a ban message without rule and key: {op!r}")
            ttl = _check_ttl(op.get("ttl"))
            if ttl > MAX_BAN:  # no ban made here lasts longer: nor may one heard of
                raise ConfigurationError(f"a ban message's ttl is over a week: {ttl!r}")
            ends = self.scheduler.clock() + ttl
            self.ban_store.ban(rule, key, ends, shadow=op.get("shadow") is True, local=False)
        elif kind == "strike":
            rule, key = op.get("rule"), op.get("key")
            if not isinstance(rule, str) or not isinstance(key, str):
                raise ConfigurationError(f"a strike message without rule and key: {op!r}")
            count = self.ban_store.strikers.get(rule)
            if count is not None:  # else no AutoBan by that label here: nothing to count
                count(key)
        elif kind == "unban":
            key = op.get("key")
            if not isinstance(key, str):
                raise ConfigurationError(f"an unban message without a key: {op!r}")
            self.ban_store.lift(key)
        else:
            raise ConfigurationError(f"unknown control operation {kind!r}")

    def close_matching(self, selector: Selector, close: Close) -> int:
        """Close every closable connection *selector* picks with *close*; how many (engine use)."""
        prefix = self.ipv6_prefix
        picked = [
            conn
            for conn in self.live_connections
            if conn.admitted and conn.state in _CLOSABLE and selector.matches(conn, prefix)
        ]
        for conn in picked:
            conn.close_soon(close)
        self.metrics.disconnects += len(picked)
        return len(picked)
