"""What a session needs of the auth rule that made it: ``AuthRule``, ``Claims``, ``Outcome``.

A protocol, so the session's module does not import the rule (and with it
PyJWT), and the rule's module can import the session's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from ws_guard._core.decisions import Close
from ws_guard.rules.auth.key_state import KeyState

if TYPE_CHECKING:
    from ws_guard.rules.auth.first_message import FromFirstMessage
    from ws_guard.rules.auth.refresh_matcher import RefreshMatcher
    from ws_guard.rules.auth.waiting_room import WaitingRoom
    from ws_guard.rules.limits.rates import Rate
    from ws_guard.rules.runtime import Runtime

#: Verified claims (a JWT's payload).
Claims = dict[str, Any]
#: What verifying a token gives: its claims, a close, or a key state (fetch pending).
Outcome = Claims | Close | KeyState


class AuthRule(Protocol):
    """What a session needs of the auth rule that made it (``JWTAuth`` is one)."""

    first_message: FromFirstMessage | None
    waiting: WaitingRoom | None
    refresh_token: RefreshMatcher | None
    refresh_rates: tuple[Rate, ...]
    expiring_notice: float | None
    leeway: float
    max_token_bytes: int
    provides_subject: ClassVar[bool]
    missing: Close
    invalid: Close
    expired: Close
    revoked: Close
    stale: Close
    unavailable: Close
    failed: Close

    def verify_now(self, token: str) -> Outcome: ...

    async def verify(self, token: str, guard: Runtime) -> Outcome: ...

    def refresh_limited(self, retry: float) -> Close: ...

    def handshake_close(self, outcome: KeyState, guard: Runtime) -> Close: ...
