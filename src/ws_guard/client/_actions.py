"""The values of the reconnect policy: actions in its table, decisions it returns.

An *action* is what the table holds for a close code (back off, wait a
random moment, refresh the token, stop); a *decision* is what the client
does now (retry after a delay, refresh then retry, stop). Both are frozen
values, so a decision can be logged, compared in tests and handed to hooks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ws_guard.codes import (
    ABNORMAL_CLOSURE,
    BAD_GATEWAY,
    GOING_AWAY,
    INTERNAL_ERROR,
    INVALID_PAYLOAD,
    MANDATORY_EXTENSION,
    MESSAGE_TOO_BIG,
    NO_STATUS,
    NORMAL,
    POLICY_VIOLATION,
    PROTOCOL_ERROR,
    REASON_BANNED,
    REASON_IDLE_TIMEOUT,
    REASON_MAX_LIFETIME,
    REASON_TOKEN_EXPIRED,
    SERVICE_RESTART,
    TLS_HANDSHAKE,
    TRY_AGAIN_LATER,
    UNSUPPORTED_DATA,
)
from ws_guard.errors import ConfigurationError

from .._validate import check_at_most_seconds, check_number

# -- actions: what the table says for a code ---------------------------------


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential back-off from a floor that doubles (by default), jitter on top.

    With ``step = min(cap, initial * factor ** (n - 1))`` seconds, attempt *n*
    waits a uniform random time in ``[step, min(cap, 2 * step)]``: never less
    than the step (the close-code guidance: back off from 1 s, doubling), up
    to one step more so clients closed together come back apart. With a
    ``retry-after`` hint it waits the hint plus a uniform time in
    ``[0, step]``, at most ``max(cap, hint)``.
    """

    initial: float = 1.0
    factor: float = 2.0

    def __post_init__(self) -> None:
        check_number("Backoff initial", self.initial, strict=True)
        check_at_most_seconds("Backoff initial", float(self.initial), maximum=600.0)
        check_number("Backoff factor", self.factor, minimum=1.0)


@dataclass(frozen=True, slots=True)
class RandomDelay:
    """A short uniform random delay in ``[low, high]``, after the hint if there is one.

    ``planned=True`` marks a close the server planned (``max_lifetime``, 1001),
    not a failure: it does not count as an attempt, so a later back-off starts
    from its first step and ``max_attempts`` is not spent on it.
    """

    low: float = 0.0
    high: float = 5.0
    planned: bool = False

    def __post_init__(self) -> None:
        check_number("RandomDelay low", self.low)
        check_number("RandomDelay high", self.high)
        if self.high < self.low:
            raise ConfigurationError(f"RandomDelay high {self.high!r} is below low {self.low!r}")
        check_at_most_seconds("RandomDelay high", float(self.high), maximum=600.0)
        if not isinstance(self.planned, bool):
            raise ConfigurationError(
                f"RandomDelay planned must be True or False, not {self.planned!r}"
            )


@dataclass(frozen=True, slots=True)
class RefreshToken:
    """Get a fresh token, then reconnect: at once the first time, backing off after.

    Stops after ``max_refreshes`` refreshes in a row that did not lead to a
    stable connection: a provider that keeps handing out expired tokens must
    not turn into a reconnect loop.
    """

    max_refreshes: int = 3
    backoff: Backoff = Backoff()

    def __post_init__(self) -> None:
        check_number("RefreshToken max_refreshes", self.max_refreshes, minimum=1, integer=True)
        if not isinstance(self.backoff, Backoff):
            raise ConfigurationError(
                f"RefreshToken backoff must be a Backoff, not {self.backoff!r}"
            )


@dataclass(frozen=True, slots=True)
class NoRetry:
    """Stop: the same connection would be refused again. ``why`` explains it."""

    why: str = ""


Action = Backoff | RandomDelay | RefreshToken | NoRetry
ActionKey = int | tuple[int, str]

# -- decisions: what the client does now ------------------------------------


@dataclass(frozen=True, slots=True)
class Retry:
    """Reconnect after ``delay`` seconds."""

    delay: float
    code: int
    reason: str
    attempt: int


@dataclass(frozen=True, slots=True)
class RefreshThenRetry:
    """Get a fresh token, then reconnect after ``delay`` seconds."""

    delay: float
    code: int
    reason: str
    attempt: int


@dataclass(frozen=True, slots=True)
class Stop:
    """Do not reconnect; ``why`` says why in words."""

    code: int
    reason: str
    attempt: int
    why: str


Decision = Retry | RefreshThenRetry | Stop

#: Why the client stops after 1001 ``idle_timeout``.
IDLE_WHY = "the server closed an idle connection: reconnect when there is something to send"

#: The action for codes nobody named: back off (never hammer, never strand).
DEFAULT_FALLBACK: Action = Backoff()

#: The defaults, as in docs/close-codes: back off on load and failures, a
#: short random delay on restart, refresh on an expired token, stop otherwise.
DEFAULT_ACTIONS: Mapping[ActionKey, Action] = {
    NORMAL: NoRetry("the server closed the connection normally"),
    GOING_AWAY: Backoff(),
    # A planned end: come back after the hint (the server's spread) and up to
    # a second more, without counting it as a failure (docs/client.md).
    (GOING_AWAY, REASON_MAX_LIFETIME): RandomDelay(0.0, 1.0, planned=True),
    # Idle: a new connection at once would only idle again; the app reconnects
    # when it has something to send (docs/client.md).
    (GOING_AWAY, REASON_IDLE_TIMEOUT): NoRetry(IDLE_WHY),
    PROTOCOL_ERROR: NoRetry("protocol error: the same client would fail again"),
    UNSUPPORTED_DATA: NoRetry("the server does not accept this data type: fix the client"),
    NO_STATUS: NoRetry("the server closed the connection without a code"),
    ABNORMAL_CLOSURE: Backoff(),
    INVALID_PAYLOAD: NoRetry("invalid message data: fix the client"),
    POLICY_VIOLATION: NoRetry("policy violation: the server would refuse a retry again"),
    (POLICY_VIOLATION, REASON_TOKEN_EXPIRED): RefreshToken(),
    # Banned for a while (rules.AutoBan): come back once the ban ends, the
    # hint, plus up to a second so banned clients do not return together.
    (POLICY_VIOLATION, REASON_BANNED): RandomDelay(0.0, 1.0),
    MESSAGE_TOO_BIG: NoRetry("message too big: fix the client"),
    MANDATORY_EXTENSION: NoRetry("the server lacks an extension the client requires"),
    INTERNAL_ERROR: Backoff(),
    SERVICE_RESTART: RandomDelay(),
    TRY_AGAIN_LATER: Backoff(),
    BAD_GATEWAY: Backoff(),
    TLS_HANDSHAKE: NoRetry("TLS handshake failed"),
}


def check_action(what: str, action: object) -> Action:
    if not isinstance(action, (Backoff, RandomDelay, RefreshToken, NoRetry)):
        raise ConfigurationError(
            f"{what} must be Backoff, RandomDelay, RefreshToken or NoRetry, not {action!r}"
        )
    return action


def check_actions(overrides: Mapping[ActionKey, Action]) -> dict[ActionKey, Action]:
    if not isinstance(overrides, Mapping):
        raise ConfigurationError(f"overrides must be a mapping, not {overrides!r}")
    checked: dict[ActionKey, Action] = {}
    for key, action in overrides.items():
        code = key[0] if isinstance(key, tuple) and len(key) == 2 else key
        if (
            isinstance(code, bool)
            or not isinstance(code, int)
            or not 1000 <= code <= 4999
            or (isinstance(key, tuple) and not isinstance(key[1], str))
        ):
            raise ConfigurationError(
                f"override keys must be a close code or (code, reason slug), not {key!r}"
            )
        checked[key] = check_action(f"override for {key!r}", action)
    return checked
