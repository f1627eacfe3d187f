"""The opt-in ``rate.warning``: one text message per window before a rate closes.

``MessageRate(..., warn_at=0.8)`` and ``ByteRate(..., warn_at=0.8)`` send a
connection one text frame when a window's use reaches that fraction of its
limit::

    {"type": "rate.warning", "rule": "<the rule's name, else rate_limited>", "retry_after": 4}

``retry_after`` is the whole seconds until that window frees, rounded up as
the close's ``retry-after`` hint is (:func:`ws_guard._core.decisions.format_retry_after`),
so a client that waits that long finds a fresh window. It goes out through
``conn.send_soon``, as ``auth.expiring`` does, at most once per window per
connection. A rule in shadow mode sends none: shadow mode changes nothing a
client sees (docs/rate-limits.md, "Warnings").
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ws_guard._validate import is_number
from ws_guard.errors import ConfigurationError
from ws_guard.rules.limits.leases import LeasedWindow
from ws_guard.rules.limits.rates import Rate

if TYPE_CHECKING:
    from ws_guard.rules.context import RuleContext

#: The ``type`` of the warning message.
WARNING_TYPE = "rate.warning"

_INF = float("inf")


def check_warn_at(what: str, value: object) -> float | None:
    """``None``, or a fraction strictly between 0 and 1 (``ConfigurationError`` otherwise).

    0 would warn on every window's first message and 1 only at the limit,
    when the next message is refused anyway: neither gives a client time.
    """
    if value is None:
        return None
    if not is_number(value) or not 0 < value < 1:
        raise ConfigurationError(
            f"{what} must be a fraction of the limit between 0 and 1, such as 0.8, not {value!r}"
        )
    return float(value)


def thresholds(rates: Sequence[Rate], warn_at: float) -> tuple[int, ...]:
    """Per rate, the use (events or bytes) at which its window warns: at least 1."""
    return tuple(max(1, math.ceil(rate.limit * warn_at)) for rate in rates)


def warning_text(rule: str, retry_after: float) -> str:
    """The warning's JSON text; *retry_after* in seconds, rounded up to a whole second."""
    seconds = max(0, math.ceil(retry_after))
    return json.dumps({"type": WARNING_TYPE, "rule": rule, "retry_after": seconds})


def used(window: Any) -> int:
    """What a window has counted, as this process knows it.

    A Redis window (:class:`LeasedWindow`) knows its own process' use, and
    that the whole window is spent once Redis refused a lease: it then
    counts as full, so the warning still comes before the close.
    """
    if isinstance(window, LeasedWindow):
        return window.limit if window.exhausted else window.used
    return int(window.count)


class Warner:
    """One connection's warnings for one rule: at most one per window of each rate."""

    __slots__ = ("conn", "quiet_until", "rule", "thresholds")

    def __init__(self, conn: RuleContext, rule: str, limits: tuple[int, ...]) -> None:
        self.conn = conn
        self.rule = rule
        self.thresholds = limits
        #: Per rate, the end of the window last warned about (guard clock, seconds).
        self.quiet_until = [-_INF] * len(limits)

    def after(self, t: float, windows: Sequence[Any]) -> None:
        """A message was admitted at *t*: warn once for each window it brought to its threshold.

        Several windows reaching theirs with one message send one warning,
        naming the longest wait.
        """
        wait: float | None = None
        quiet = self.quiet_until
        for i, window in enumerate(windows):
            if t < quiet[i] or used(window) < self.thresholds[i]:
                continue
            end = window.end
            quiet[i] = end
            if wait is None or end - t > wait:
                wait = end - t
        if wait is not None:
            self.conn.send_soon({"type": "websocket.send", "text": warning_text(self.rule, wait)})
