"""Reading ws_guard's view of a connection from inside the app."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ws_guard._core.states import AUTHENTICATING, CLOSED, CONNECTING, GUARD_CLOSED, OPEN

if TYPE_CHECKING:
    from ws_guard.rules.context import RuleContext

_STATE_NAMES = {
    CONNECTING: "connecting",
    OPEN: "open",
    AUTHENTICATING: "authenticating",
    CLOSED: "closed",
    GUARD_CLOSED: "closed",
}


def state_name(state: int) -> str:
    """A connection state's name: ``connecting``, ``open``, ``authenticating`` or ``closed``."""
    return _STATE_NAMES[state]


class ConnectionInfo:
    """What the app may read about its connection, at ``scope["ws_guard"]``."""

    __slots__ = ("_conn",)

    def __init__(self, conn: RuleContext) -> None:
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
        return state_name(self._conn.state)

    def __repr__(self) -> str:
        return (
            f"ConnectionInfo(id={self.id!r}, client_ip={self.client_ip!r}, "
            f"subject={self.subject!r})"
        )


def connection_info(conn: Any) -> ConnectionInfo | None:
    """The guard's :class:`ConnectionInfo` for a scope or a Starlette ``WebSocket``.

    ``None`` when the connection is not guarded (an unguarded path).
    """
    scope = getattr(conn, "scope", conn)
    info = scope.get("ws_guard")
    return info if isinstance(info, ConnectionInfo) else None
