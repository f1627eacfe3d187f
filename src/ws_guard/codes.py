"""Close codes and limits of the wire, as named constants.

RFC 6455 caps a close frame's payload at 125 bytes, two of which hold the
code, so a reason is at most 123 bytes of UTF-8. uvicorn's websockets
protocols crash on a longer one (the client then sees 1006), so reasons are
cut here, on a character boundary, before anything is sent.
"""

from __future__ import annotations

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
