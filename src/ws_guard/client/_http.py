"""A handshake refused with an HTTP status, read as the close it stands for.

ws_guard's opt-in HTTP denial (``Guard(reject="http")``) answers 503 +
``Retry-After`` for load, 429 for rates and 403 for auth, with the close
reason as the body. Mapping the status back to a close code lets one policy
table drive both modes: 503/429 back off like 1013, 403 stops like 1008
(or refreshes, when the body says ``token_expired``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ws_guard.codes import (
    INTERNAL_ERROR,
    MAX_REASON_BYTES,
    POLICY_VIOLATION,
    PROTOCOL_ERROR,
    REASON_OVERLOADED,
    REASON_RATE_LIMITED,
    REASON_RESTARTING,
    SERVICE_RESTART,
    TRY_AGAIN_LATER,
)

from ._reason import reason_slug, retry_after_hint

#: A reason worth keeping from a body: a short slug, optionally with hints.
_SLUG = re.compile(r"[a-z0-9_.:\-]{1,64}")
_SECONDS = re.compile(r"[0-9]{1,12}")


def close_from_http(status: int, headers: Mapping[str, str], body: bytes) -> tuple[int, str]:
    """The ``(code, reason)`` a refused handshake counts as for the policy."""
    reason = body.decode("utf-8", "replace").strip()
    if len(reason.encode("utf-8")) > MAX_REASON_BYTES or not _SLUG.fullmatch(reason_slug(reason)):
        reason = ""  # not a ws_guard reason (an HTML error page, say): keep none of it
    if status in (429, 503):
        code = SERVICE_RESTART if reason_slug(reason) == REASON_RESTARTING else TRY_AGAIN_LATER
        reason = reason or (REASON_RATE_LIMITED if status == 429 else REASON_OVERLOADED)
        header = headers.get("retry-after", "").strip()
        if retry_after_hint(reason) is None and _SECONDS.fullmatch(header):
            reason = f"{reason_slug(reason)}; retry-after={int(header)}"
    elif status in (401, 403):
        code, reason = POLICY_VIOLATION, reason or f"http_{status}"
    elif 400 <= status < 500:
        code, reason = POLICY_VIOLATION, f"http_{status}"
    elif status >= 500:
        code, reason = INTERNAL_ERROR, f"http_{status}"
    else:  # an answer that is neither an upgrade nor an error: no WebSocket here
        code, reason = PROTOCOL_ERROR, f"http_{status}"
    return code, reason
