"""``RuleContext``: what a rule or a gauge may see and do of one connection.

Rules, gauges, drain and shedding are typed against this protocol, never
against the engine's connection class, so the engine can change without
touching them and a rule can be tested with any object of this shape.
``ws_guard._core.connection.Connection`` implements it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any, Protocol

from ws_guard._core.decisions import Close, Consume
from ws_guard.types import Message, Scope

if TYPE_CHECKING:
    from ws_guard._core.scheduler import Deadline
    from ws_guard.rules.runtime import Runtime


#: What a message check returns: close, keep from the app (CONSUME), or pass (None).
Verdict = Close | Consume | None
#: A per-connection message check: sees every ``websocket.receive`` message.
Checker = Callable[[Message], Verdict]


class RuleContext(Protocol):
    """One guarded connection, as rules and gauges see it.

    Identity (``subject``, ``claims``) is set by the auth rule; any other
    per-connection state a rule keeps between its hooks lives in
    ``extra[rule]`` (the rule object as key), and what only its message
    check needs lives in that check (the function ``Rule.checker`` returns).
    """

    #: The ASGI scope; rules may edit it before the app sees it (token redaction).
    scope: Scope
    #: The verified JWT ``sub``; ``None`` without an auth rule or before the token.
    subject: str | None
    #: The verified JWT claims (read-only), replaced on an in-band refresh.
    claims: Mapping[str, Any] | None

    @property
    def id(self) -> str:
        """A random id, unique across processes (hex, 32 characters)."""

    @property
    def client_ip(self) -> str:
        """The client's address, ``X-Forwarded-For`` honoured only from trusted proxies."""

    @property
    def guard(self) -> Runtime:
        """The runtime the connection belongs to (scheduler, storage, metrics)."""

    @property
    def state(self) -> int:
        """The lifecycle state, one of the constants in ``ws_guard._core.states``."""

    @property
    def admitted(self) -> bool:
        """Admission passed: the connection is counted as open."""

    @property
    def opened_at(self) -> float:
        """When admission passed, ``time.monotonic()`` seconds; 0.0 before."""

    @property
    def messages_in(self) -> int | None:
        """Data messages the app has received; ``None`` unless ``Guard(count_messages=True)``."""

    @property
    def messages_out(self) -> int | None:
        """Data messages the app has sent; ``None`` unless ``Guard(count_messages=True)``."""

    @property
    def path(self) -> str:
        """The request path (the scope's ``path``)."""

    def header(self, name: str) -> str | None:
        """A request header by lower-case name (repeated lines joined); ``None`` when absent."""

    @property
    def query(self) -> dict[str, list[str]]:
        """The query string, parsed (``urllib.parse.parse_qs``, blanks kept)."""

    @property
    def subprotocols(self) -> list[str]:
        """The subprotocols the client offered, in order."""

    @property
    def extra(self) -> MutableMapping[Any, Any]:
        """Per-connection state of the rules, keyed by the rule object; made on first use."""

    def call_at(self, when: float, callback: Callable[[], Any]) -> Deadline:
        """Run *callback* at *when* (guard scheduler's clock); cancelled at the connection's end."""

    def close_soon(self, close: Close) -> None:
        """Close with *close* from sync code (a shadow close is only counted and logged)."""

    def send_soon(self, message: Message) -> bool:
        """Send a frame of ws_guard's own while open; False when the connection is not open."""

    def hold(self, pending: Awaitable[Close | None]) -> None:
        """Deliver no further client message until *pending* decides (a key fetch)."""

    def hold_until_verified(self) -> None:
        """Hold the app's sends after its accept until :meth:`verified` (first-message token)."""

    def verified(self) -> None:
        """The pending first-message token is valid: held sends go out."""
