"""Close decisions: what rules and gauges return, and the retry hints they carry."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from ws_guard.codes import is_sendable_code, truncate_reason
from ws_guard.errors import ConfigurationError


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
    #: Who the close is counted for (``closes_by_initiator``): ``"guard"`` for a
    #: rule's or gauge's decision, ``"server"`` for one the server's own code
    #: asked for (``guard.disconnect()``, ``guard.revoke()``).
    initiator: str = "guard"

    def __post_init__(self) -> None:
        if not is_sendable_code(self.code):
            raise ConfigurationError(f"close code {self.code!r} cannot be sent in a close frame")
        if not isinstance(self.reason, str):
            raise ConfigurationError(f"close reason must be a string, not {self.reason!r}")
        if self.initiator not in ("guard", "server"):
            raise ConfigurationError(
                f"close initiator must be 'guard' or 'server', not {self.initiator!r}"
            )

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
