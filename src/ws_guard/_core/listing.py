"""Who is connected: a frozen copy of each open connection, and the selectors that pick them.

``guard.connections()`` and ``guard.disconnect()`` read the guard's live set
(``guard.live_connections``) once per call; nothing here runs per message.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ws_guard._core.info import state_name
from ws_guard.errors import ConfigurationError
from ws_guard.rules.keys import UNKNOWN, ip_key

if TYPE_CHECKING:
    from ws_guard.rules.context import RuleContext


@dataclass(frozen=True, slots=True)
class ConnectionSnapshot:
    """One open connection at the moment ``guard.connections()`` was called.

    - ``id``: the connection's random id (32 hex characters), as in
      ``CloseEvent.connection_id`` and ``guard.disconnect(connection_id=...)``;
    - ``client_ip``: the client's address (``X-Forwarded-For`` only from
      ``trusted_proxies``), ``"unknown"`` when the server gave none;
    - ``key``: the address as ``rules.by_ip`` keys it (an IPv6 client by its
      ``/ipv6_prefix`` network), what ``disconnect(key=...)`` matches;
    - ``subject``: the verified JWT ``sub``, ``None`` without an auth rule;
    - ``path``: the request path (never the query string, where a token may be);
    - ``opened_at``: wall-clock seconds (``time.time()`` base) when admission passed;
    - ``state``: ``"connecting"`` (admitted, not yet accepted), ``"open"`` or
      ``"authenticating"`` (waiting for a first-message token);
    - ``messages_in``, ``messages_out``: data messages the app received and
      sent, or ``None``: they are counted only with
      ``Guard(count_messages=True)``, which adds a coroutine frame per
      message each way (see docs/control.md).
    """

    id: str
    client_ip: str
    key: str
    subject: str | None
    path: str
    opened_at: float
    state: str
    messages_in: int | None = None
    messages_out: int | None = None


def snapshot_of(conn: RuleContext, ipv6_prefix: int, wall_offset: float) -> ConnectionSnapshot:
    """*conn* as a :class:`ConnectionSnapshot`.

    *wall_offset* is ``time.time() - time.monotonic()`` (seconds), to turn the
    connection's monotonic ``opened_at`` into wall-clock time.
    """
    return ConnectionSnapshot(
        id=conn.id,
        client_ip=conn.client_ip,
        key=address_key(conn, ipv6_prefix),
        subject=conn.subject,
        path=conn.path,
        opened_at=conn.opened_at + wall_offset,
        state=state_name(conn.state),
        messages_in=conn.messages_in,
        messages_out=conn.messages_out,
    )


def snapshots(conns: Iterable[RuleContext], ipv6_prefix: int) -> list[ConnectionSnapshot]:
    """Every admitted connection of *conns* still open, oldest first."""
    wall_offset = time.time() - time.monotonic()
    found = [
        snapshot_of(conn, ipv6_prefix, wall_offset)
        for conn in conns
        if conn.admitted and state_name(conn.state) != "closed"
    ]
    found.sort(key=lambda snap: (snap.opened_at, snap.id))
    return found


def address_key(conn: RuleContext, ipv6_prefix: int) -> str:
    """The connection's address key, as ``rules.by_ip`` makes it."""
    ip = conn.client_ip
    return f"{UNKNOWN}:{conn.id}" if ip == UNKNOWN else ip_key(ip, ipv6_prefix)


@dataclass(frozen=True, slots=True)
class Selector:
    """Which connections a disconnect picks: every given field must match (AND).

    ``key`` matches the connection's address key (``rules.by_ip``) or its
    exact address; ``subject`` the verified JWT ``sub``; ``connection_id`` the
    id; ``jti`` the verified token's ``jti`` claim. No field given matches
    every connection: callers require one.
    """

    subject: str | None = None
    key: str | None = None
    connection_id: str | None = None
    jti: str | None = None

    def __post_init__(self) -> None:
        for name in ("subject", "key", "connection_id", "jti"):
            value = getattr(self, name)
            if value is not None:
                check_selector_value(name, value)

    @property
    def empty(self) -> bool:
        fields = (self.subject, self.key, self.connection_id, self.jti)
        return all(value is None for value in fields)

    def matches(self, conn: RuleContext, ipv6_prefix: int) -> bool:
        if self.connection_id is not None and conn.id != self.connection_id:
            return False
        if self.subject is not None and conn.subject != self.subject:
            return False
        if self.jti is not None and (conn.claims is None or conn.claims.get("jti") != self.jti):
            return False
        if self.key is None:
            return True
        ip = conn.client_ip
        # "unknown" is no address: as a key it would pick every connection
        # without one (a Unix socket's), not the one a listing showed it on.
        return (self.key == ip and ip != UNKNOWN) or self.key == address_key(conn, ipv6_prefix)


def check_selector_value(name: str, value: object) -> str:
    """A selector or key: a non-empty string of valid UTF-8 text.

    A lone surrogate (``"\\ud800"``, which a JSON body can carry) has no
    UTF-8 form, so it can name no Redis key: with
    Redis storage it raised ``UnicodeEncodeError`` after the call had
    already applied here. Refused on every storage, so a call means the same
    everywhere. Raises :class:`ConfigurationError` naming the value.
    """
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{name} must be a non-empty string, not {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigurationError(f"{name} is not valid UTF-8 text: {value[:40]!r}") from None
    return value
