"""Private-range twins of RFC close codes, for servers that refuse the RFC codes.

daphne (4.2) hands every ``websocket.close`` to autobahn's ``sendClose``,
which accepts only 1000 and 3000-4999 and raises a bare
``Exception("invalid close code 1009 (must be 1000 or from [3000, 4999])")``
for anything else, before a byte goes out. Uncaught, that exception ends
the app and daphne sends a bare 1011 instead of the code ws_guard meant.

So a refused close goes out again as its twin: **the code + 3000** (1008 →
4008, 1009 → 4009, 1013 → 4013), with the same reason, once that server
has refused the RFC code on that connection. The signal is the refusal
itself, not the server's name: the ASGI scope does not say which server
runs (daphne's scope carries only ``asgi: {"version": "3.0"}``), and a
server that starts sending RFC codes gets them again with no change here.

Twinned are the RFC codes a close frame may carry above 1000 (RFC 6455
section 7.4.1 and the IANA registry: 1001-1003, 1007-1014); 1000 itself
needs no twin. The client reconnect policies (``ws_guard.client``,
``examples/static/reconnect.js``) map exactly these twins back.

This module imports nothing but ``ws_guard.codes``, so the client may import it.
"""

from __future__ import annotations

#: A twin is its RFC code plus this: 1009 → 4009 (RFC 6455 section 7.4.2:
#: 4000-4999 are for private use).
TWIN_OFFSET = 3000

#: The RFC codes that have a twin: every code above 1000 a close frame may carry.
TWINNED_CODES = frozenset({1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})

#: How autobahn's ``sendClose`` words its refusal (autobahn 26.x, daphne 4.2).
_REFUSAL_PREFIX = "invalid close code "


def twin_code(code: int) -> int:
    """*code*'s private-range twin (1009 → 4009); *code* itself when it has none."""
    return code + TWIN_OFFSET if code in TWINNED_CODES else code


def rfc_code(code: int) -> int:
    """The RFC code a twin stands for (4009 → 1009); any other *code* unchanged."""
    original = code - TWIN_OFFSET
    return original if original in TWINNED_CODES else code


def refuses_close_code(exc: BaseException, code: object) -> bool:
    """Whether *exc* is a server refusing close *code* itself, before sending anything.

    autobahn raises a plain ``Exception`` naming the code; anything else
    (a subclass, another message, a code with no twin) is not this refusal
    and must propagate.
    """
    return (
        type(exc) is Exception
        and isinstance(code, int)
        and code in TWINNED_CODES
        and str(exc).startswith(f"{_REFUSAL_PREFIX}{code} ")
    )
