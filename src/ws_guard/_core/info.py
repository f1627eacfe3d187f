"""Reading ws_guard's view of a connection from inside the app."""

from __future__ import annotations

from typing import Any

from ws_guard._core.connection import ConnectionInfo


def connection_info(conn: Any) -> ConnectionInfo | None:
    """The guard's :class:`ConnectionInfo` for a scope or a Starlette ``WebSocket``.

    ``None`` when the connection is not guarded (an unguarded path).
    """
    scope = getattr(conn, "scope", conn)
    info = scope.get("ws_guard")
    return info if isinstance(info, ConnectionInfo) else None
