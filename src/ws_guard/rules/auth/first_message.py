"""The first-message token source: the token comes after the accept, in band.

The token travels inside the WebSocket stream, not in the handshake, so no
proxy's access log can hold it (docs/auth.md). Until it comes the connection
waits in the rule's waiting room (rules/auth/waiting_room.py), bounded per
client address and in total: a tokenless socket costs as much as a real one.
"""

from __future__ import annotations

from ws_guard._json import Unreadable, read_json
from ws_guard._validate import check_count, check_seconds
from ws_guard.errors import ConfigurationError
from ws_guard.rules.auth.tokens import TokenSource, check_name
from ws_guard.types import Message

#: Tokenless connections one client address may hold waiting for a first
#: message: a real client waits one round trip, so even a busy NAT rarely
#: has more than a few waiting at once.
DEFAULT_PENDING_PER_IP = 10


class FromFirstMessage(TokenSource):
    """The first client message carries the token; ws_guard consumes it.

    The message is either the bare token or a JSON object with the token
    under ``field`` (``{"type": "auth", "token": "..."}``). Without it within
    ``timeout`` seconds of the accept, the connection closes ``token_missing``.

    Connections waiting for it are bounded per process: ``max_pending_per_ip``
    per client address (``rules.by_ip`` keys; default 10, or ``max_pending``
    if smaller; past it 1008 ``too_many_unauthenticated``) and
    ``max_pending`` in all (past it 1013 ``overloaded; retry-after=<seconds>``, the
    hint being ``timeout``).
    """

    deferred = True

    def __init__(
        self,
        timeout: float = 10.0,
        *,
        field: str = "token",
        max_pending: int = 1000,
        max_pending_per_ip: int | None = None,
    ) -> None:
        # An unauthenticated connection is held this long: minutes at most.
        self.timeout = check_seconds("from_first_message timeout", timeout, maximum=300.0)
        self.field = check_name("from_first_message field", field)
        self.max_pending = check_count("from_first_message max_pending", max_pending)
        self.max_pending_per_ip = (
            min(DEFAULT_PENDING_PER_IP, self.max_pending)
            if max_pending_per_ip is None
            else check_count("from_first_message max_pending_per_ip", max_pending_per_ip)
        )
        if self.max_pending_per_ip > self.max_pending:
            # The per-address bound could never bind: one client could fill the total.
            raise ConfigurationError(
                f"from_first_message max_pending_per_ip ({max_pending_per_ip!r}) must not "
                f"exceed max_pending ({max_pending!r})"
            )

    def parse(self, message: Message) -> str | Unreadable | None:
        """The token in *message*, ``None`` when it carries none, or why it cannot be read.

        ``None``: an empty message, or a JSON object without ``field``
        (``token_missing``). An :class:`~ws_guard._json.Unreadable`: binary
        that is not UTF-8, JSON that cannot be read (see ``_parse``), or a
        ``field`` that is not a non-empty string (``token_invalid``). Never
        raises, whatever the client sent.
        """
        payload = message.get("text")
        if payload is None:
            data = message.get("bytes")
            if not isinstance(data, bytes):
                return None
            try:
                payload = data.decode("utf-8")
            except UnicodeDecodeError:
                return Unreadable.NOT_JSON
        payload = payload.strip()
        if payload.startswith("{"):
            value = read_json(payload)
            if isinstance(value, Unreadable):
                return value
            if not isinstance(value, dict):  # "{" opens an object: never taken
                return Unreadable.NOT_JSON
            if self.field not in value:
                return None
            token = value[self.field]
            return token if isinstance(token, str) and token else Unreadable.REFUSED
        return payload or None


def from_first_message(
    timeout: float = 10.0,
    *,
    field: str = "token",
    max_pending: int = 1000,
    max_pending_per_ip: int | None = None,
) -> FromFirstMessage:
    """The token in the first client message, which the app never sees.

    Until it is verified the app's sends are held; connections waiting for it
    are bounded per client address and in total (see :class:`FromFirstMessage`).
    """
    return FromFirstMessage(
        timeout, field=field, max_pending=max_pending, max_pending_per_ip=max_pending_per_ip
    )
