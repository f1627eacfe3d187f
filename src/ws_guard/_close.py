"""Close decisions and the wire rules every close obeys.

RFC 6455 caps a close frame's payload at 125 bytes, two of which hold the
code, so a reason is at most 123 bytes of UTF-8. uvicorn's websockets
protocols crash on a longer one (the client then sees 1006), so reasons are
cut here, on a character boundary, before anything is sent.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from ._errors import ConfigurationError

MAX_REASON_BYTES = 123

NORMAL = 1000
GOING_AWAY = 1001
UNSUPPORTED_DATA = 1003
#: "No status code present" (RFC 6455 section 7.4.1): never on the wire.
NO_STATUS = 1005
#: Never sent; servers report it for a connection lost without a close frame.
ABNORMAL_CLOSURE = 1006
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009
INTERNAL_ERROR = 1011
SERVICE_RESTART = 1012
TRY_AGAIN_LATER = 1013

#: Counted as the code of an app's close *before* accept: no close frame goes
#: out, the server refuses the handshake with HTTP 403 (ASGI spec; uvicorn and
#: hypercorn alike). An HTTP status, so it never collides with a close code.
HTTP_FORBIDDEN = 403

#: Codes that must never appear in a close frame (RFC 6455 section 7.4.1).
RESERVED_CODES = frozenset({1004, 1005, 1006, 1015})


def is_sendable_code(code: object) -> bool:
    """True when *code* may be put in a close frame.

    RFC 6455 section 7.4.2: 1000-2999 belong to the protocol, and of those
    only the defined codes (1000-1003, 1007-1014 in the IANA registry) may
    be sent; 3000-4999 are for libraries and apps; anything else is invalid.
    """
    if isinstance(code, bool) or not isinstance(code, int) or code in RESERVED_CODES:
        return False
    return 1000 <= code <= 1014 or 3000 <= code <= 4999


def sendable_code_for(code: int) -> int:
    """The code ws_guard sends in place of an app's unsendable *code*.

    1005 means "no status code": a close without one is a normal close, so
    1000. Every other unsendable code (1004, 1006, 1015, 1016-2999, < 1000,
    >= 5000) is the app's mistake: 1011 internal error, as for a crash.
    """
    return NORMAL if code == NO_STATUS else INTERNAL_ERROR


def truncate_reason(reason: str, limit: int = MAX_REASON_BYTES) -> str:
    """Cut *reason* to at most *limit* bytes of UTF-8, never inside a character."""
    encoded = reason.encode("utf-8")
    if len(encoded) <= limit:
        return reason
    return encoded[:limit].decode("utf-8", errors="ignore")


def format_retry_after(seconds: float, *, tenths: bool = False) -> str:
    """The ``retry-after`` hint of a close reason, rounded up so a client never comes back early.

    Whole seconds by default: a rate window's reopening time has no spread
    to keep. With *tenths* (a jittered load or drain hint) to a tenth of a
    second, so the jitter reaches the client: rounded up to whole seconds a
    1-2 s draw was always ``2`` and a reconnect herd came back in lockstep.
    ``2``, not ``2.0``, for a whole number; ws_guard's clients (Python and
    ``reconnect.js``) read decimals.
    """
    if not tenths:
        return str(max(0, math.ceil(seconds)))
    # round() first: 1.4 * 10 is 14.000000000000002, which must stay 14.
    count = max(0, math.ceil(round(seconds * 10, 6)))
    whole, tenth = divmod(count, 10)
    return str(whole) if tenth == 0 else f"{whole}.{tenth}"


def http_retry_after(seconds: float, rng: random.Random) -> str:
    """Whole seconds for an HTTP ``Retry-After`` header, rounded at random.

    The header takes only whole seconds (RFC 9110 section 10.2.3). A
    jittered hint of 1.4 s becomes 2 with probability 0.4 and 1 otherwise,
    so the mean stays the hint and the clients stay spread out; always
    rounding up sent every client the same ``2``. *rng* is the guard's
    random source (``Guard(random_source=...)``).
    """
    seconds = max(0.0, seconds)
    whole = math.floor(seconds)
    if rng.random() < seconds - whole:
        whole += 1
    return str(whole)


@dataclass(frozen=True, slots=True)
class Close:
    """A decision to close a connection, returned by rules and gauges.

    ``reason`` is a stable ASCII slug (``rate_limited``); ``retry_after`` adds
    a ``; retry-after=<seconds>`` hint (see :func:`format_retry_after`).
    ``shadow`` marks a breach by a rule in shadow mode: it is counted and
    logged, and the connection lives on.
    """

    code: int
    reason: str
    rule: str
    retry_after: float | None = None
    shadow: bool = False
    #: ``retry_after`` is a jittered draw (load shedding, drain): sent to a
    #: tenth of a second, and randomly rounded in an HTTP ``Retry-After``.
    jittered: bool = False

    def __post_init__(self) -> None:
        if not is_sendable_code(self.code):
            raise ConfigurationError(f"close code {self.code!r} cannot be sent in a close frame")
        if not isinstance(self.reason, str):
            raise ConfigurationError(f"close reason must be a string, not {self.reason!r}")

    @property
    def wire_reason(self) -> str:
        """The reason as sent: slug, optional hint, at most 123 bytes."""
        reason = self.reason
        if self.retry_after is not None:
            hint = format_retry_after(self.retry_after, tenths=self.jittered)
            reason = f"{reason}; retry-after={hint}"
        return truncate_reason(reason)


class Consume:
    """Marker a message check returns to keep a message from the app.

    Used for messages addressed to the guard itself (an in-band token).
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "CONSUME"


CONSUME = Consume()
