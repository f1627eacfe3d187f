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
from typing import TYPE_CHECKING

from ws_guard._core.decisions import Close
from ws_guard._core.listing import ConnectionSnapshot, Selector, snapshots
from ws_guard._core.states import AUTHENTICATING, CONNECTING, OPEN
from ws_guard.codes import (
    GOING_AWAY,
    INTERNAL_ERROR,
    MAX_REASON_BYTES,
    NORMAL,
    POLICY_VIOLATION,
    REASON_DISCONNECTED,
    SERVICE_RESTART,
    TRY_AGAIN_LATER,
)
from ws_guard.errors import ConfigurationError

if TYPE_CHECKING:
    from ws_guard.metrics.snapshot import Metrics
    from ws_guard.rules.context import RuleContext

#: The rule label (``closes_by_rule``) of a ``guard.disconnect()`` close.
RULE_DISCONNECT = "disconnect"
#: A disconnect's decision with the default code and reason; each call
#: replaces the code and reason it was given.
DISCONNECTED = Close(POLICY_VIOLATION, REASON_DISCONNECTED, RULE_DISCONNECT, initiator="server")
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


class ControlPlane:
    """``guard.connections()`` and ``guard.disconnect()``; a base of :class:`ws_guard.Guard`."""

    # Set by Guard.__init__.
    live_connections: set[RuleContext]
    ipv6_prefix: int
    metrics: Metrics

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
        close = dataclasses.replace(
            DISCONNECTED, code=check_close_code(code), reason=check_close_reason(reason)
        )
        return self.close_matching(selector, close)

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
