"""Close codes, reason slugs and limits of the wire, as named constants.

Sources:

- Close codes: RFC 6455 section 7.4.1 (1000-1011, 1015) and the IANA
  "WebSocket Close Code Number Registry" (1012-1014). 1004 is reserved;
  1005, 1006 and 1015 must never be put in a close frame (section 7.4.1).
- The reason limit: a control frame's payload is at most 125 bytes (section
  5.5) and a close frame's payload is the 2-byte code followed by the reason
  (section 5.5.1), so a reason is at most 123 bytes of UTF-8. uvicorn's
  websockets protocols crash on a longer one (the client then sees 1006;
  measured, docs/close-codes.md), so reasons are cut here, on a character
  boundary, before anything is sent.
- Reason slugs: what ws_guard itself sends, one constant per slug, and the
  source sends each through its constant; a test (tests/project/test_codes.py)
  keeps them equal to the slugs the source sends and to the table in
  docs/close-codes.md. A slug may be followed on the wire by
  ``; retry-after=<seconds>``.

This module imports nothing from ws_guard, so anything may import it.
"""

from __future__ import annotations

MAX_REASON_BYTES = 123

# -- close codes (RFC 6455 section 7.4.1, IANA registry) ----------------------------

NORMAL = 1000
GOING_AWAY = 1001
PROTOCOL_ERROR = 1002
UNSUPPORTED_DATA = 1003
#: "No status code present" (RFC 6455 section 7.4.1): never on the wire.
NO_STATUS = 1005
#: Never sent; servers report it for a connection lost without a close frame.
ABNORMAL_CLOSURE = 1006
INVALID_PAYLOAD = 1007
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009
MANDATORY_EXTENSION = 1010
INTERNAL_ERROR = 1011
SERVICE_RESTART = 1012
TRY_AGAIN_LATER = 1013
BAD_GATEWAY = 1014
#: Never sent; reported for a failed TLS handshake.
TLS_HANDSHAKE = 1015

# -- reason slugs ws_guard sends (docs/close-codes.md) ------------------------------
# Named REASON_* because several slugs spell the name of their code
# (``MESSAGE_TOO_BIG`` is 1009; its slug is ``REASON_MESSAGE_TOO_BIG``).

#: 1003, ``rules.MessageTypes``: a text frame to a binary-only endpoint or back.
REASON_UNSUPPORTED_DATA = "unsupported_data"
#: 1009, ``rules.MaxMessageSize``: a message over the size limit.
REASON_MESSAGE_TOO_BIG = "message_too_big"
#: 1008, ``rules.Content``/``Pattern``/``Json``: the prefix of ``content:<rule name>``.
REASON_CONTENT_PREFIX = "content:"
#: 1008 with a retry hint, ``rules.MessageRate``: messages sent too fast.
REASON_RATE_LIMITED = "rate_limited"
#: 1008 with a retry hint, ``rules.ConnectRate``: handshakes too often.
REASON_CONNECT_RATE_LIMITED = "connect_rate_limited"
#: 1008, ``rules.MaxConnectionsPerKey``: the key holds too many connections.
REASON_TOO_MANY_CONNECTIONS = "too_many_connections"
#: 1008, ``rules.by_ip`` (any rule keyed by address): the server gave no client address.
REASON_CLIENT_UNKNOWN = "client_unknown"
#: 1008, ``rules.AllowedOrigins``: the handshake's ``Origin`` is not allowed.
REASON_ORIGIN_NOT_ALLOWED = "origin_not_allowed"
#: 1008, ``rules.JWTAuth``: no token at the handshake.
REASON_TOKEN_MISSING = "token_missing"
#: 1008, ``rules.JWTAuth``: a token that does not verify.
REASON_TOKEN_INVALID = "token_invalid"
#: 1008, ``rules.JWTAuth``: the token expired, at the handshake or while open.
REASON_TOKEN_EXPIRED = "token_expired"
#: 1008, ``rules.JWTAuth``: an in-band refresh whose ``exp`` is not later.
REASON_TOKEN_STALE = "token_stale"
#: 1008 with a retry hint, ``rules.JWTAuth(refresh_rate=...)``: refreshes too often.
REASON_REFRESH_RATE_LIMITED = "refresh_rate_limited"
#: 1008, ``rules.JWTAuth`` first-message tokens: too many tokenless sockets per address.
REASON_TOO_MANY_UNAUTHENTICATED = "too_many_unauthenticated"
#: 1013 with a retry hint, load gauges and the first-message token bound: overloaded.
REASON_OVERLOADED = "overloaded"
#: 1013, rate and cap rules with ``Guard(on_storage_error="deny")``: storage failed.
REASON_STORAGE_UNAVAILABLE = "storage_unavailable"
#: 1012 with a retry hint, ``guard.drain()`` (its default code): the server restarts.
REASON_RESTARTING = "restarting"
#: 1001 with a retry hint, ``guard.drain(code=1001)``: the server goes away.
REASON_GOING_AWAY = "going_away"
#: 1011, the guard: the app (or a rule's user callable) raised after accept.
REASON_INTERNAL_ERROR = "internal_error"
#: 1011, the guard: a Redis storage needs asyncio and the server runs trio.
REASON_UNSUPPORTED_BACKEND = "unsupported_backend"
#: 1001, ``rules.IdleTimeout``: no client message for the idle timeout.
REASON_IDLE_TIMEOUT = "idle_timeout"
#: 1001 with a retry hint, ``rules.MaxLifetime``: the connection reached its lifetime.
REASON_MAX_LIFETIME = "max_lifetime"
#: 1008 with a retry hint, ``rules.MessageRate(match=...)``: ``rate_limited:<name>``.
REASON_RATE_LIMITED_PREFIX = "rate_limited:"
#: 1008, ``SlowConsumer``: the app's send waited too long for a client that does not read.
REASON_SLOW_CONSUMER = "slow_consumer"
#: 1008 with a retry hint, ``rules.AutoBan``: the key is banned after repeated policy closes.
REASON_BANNED = "banned"
#: 1008, ``rules.JWTAuth`` and ``guard.revoke()``: the token's ``jti`` or ``sub`` is revoked.
REASON_TOKEN_REVOKED = "token_revoked"
#: 1008 by default, ``guard.disconnect()``: the server's code closed the connection.
REASON_DISCONNECTED = "disconnected"

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
