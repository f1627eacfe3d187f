"""The reconnect policy: what a client does after each close code.

A close code is the server telling the client what to do next. 1013 means
"not now": clients that come straight back keep the server overloaded, so
they back off exponentially (never before ``initial * factor ** (n - 1)``
seconds, up to twice that, so a herd spreads without anyone coming back
early) and never return before the server's ``retry-after`` hint. 1008
means "not like this": the same request is refused again, so the client
stops, unless the reason is ``token_expired``, which a fresh token fixes. The decision is a pure
function of (code, reason, attempt) and an injected random source;
:class:`ReconnectSession` adds the one piece of state, the attempt counter,
which resets once a connection has stayed up for ``stable_after`` seconds.
``examples/static/reconnect.js`` implements the same table for browsers.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping

from ws_guard._core.twins import rfc_code
from ws_guard.errors import ConfigurationError

from .._validate import (
    check_at_most_seconds,
    check_clock,
    check_number,
    check_random_source,
    is_number,
)
from ._actions import (
    DEFAULT_ACTIONS,
    DEFAULT_FALLBACK,
    Action,
    ActionKey,
    Backoff,
    Decision,
    NoRetry,
    RandomDelay,
    RefreshThenRetry,
    RefreshToken,
    Retry,
    Stop,
    check_action,
    check_actions,
)
from ._reason import reason_slug, retry_after_hint


class ReconnectPolicy:
    """Decides, per close, whether and when to reconnect.

    ``overrides`` maps a close code, or ``(code, reason slug)``, to an action.
    The most specific key wins, a user's before the default at the same
    level: ``(1008, "token_expired")``, then ``1008``, then ``fallback`` for
    codes nobody named. A reason of a family (``rate_limited:chat``) looks
    up ``(1008, "rate_limited:chat")``, then ``(1008, "rate_limited")``.
    No delay exceeds ``cap`` unless the server's hint is longer; hints
    above ``max_hint`` are cut to it.
    """

    __slots__ = (
        "_actions",
        "_random",
        "cap",
        "clock",
        "fallback",
        "max_attempts",
        "max_hint",
        "stable_after",
    )

    def __init__(
        self,
        *,
        overrides: Mapping[ActionKey, Action] | None = None,
        fallback: Action = DEFAULT_FALLBACK,
        cap: float = 60.0,
        stable_after: float = 30.0,
        max_attempts: int | None = None,
        max_hint: float = 3600.0,
        random_source: random.Random | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        check_number("cap", cap, strict=True)
        # stable_after=0 would reset the attempt count on every accept-then-close
        # (how a guard refuses browsers), so back-off would never grow; max_hint=0
        # would throw away every retry-after the server sends.
        check_number("stable_after", stable_after, strict=True)
        check_number("max_hint", max_hint, strict=True)
        check_at_most_seconds("cap", float(cap), maximum=3600.0)
        check_at_most_seconds("stable_after", float(stable_after), maximum=3600.0)
        check_at_most_seconds("max_hint", float(max_hint), maximum=86400.0)
        if max_attempts is not None and not (
            is_number(max_attempts, integer=True) and max_attempts >= 1
        ):
            raise ConfigurationError(
                f"max_attempts must be None or an int >= 1, not {max_attempts!r}"
            )
        self.cap = float(cap)
        self.stable_after = float(stable_after)
        self.max_attempts = max_attempts
        self.max_hint = float(max_hint)
        self.fallback = check_action("fallback", fallback)
        self._actions = check_actions(overrides or {})
        self._random = check_random_source(random_source) or random.Random()
        self.clock = check_clock(clock) or time.monotonic

    def __repr__(self) -> str:
        return (
            f"ReconnectPolicy(cap={self.cap!r}, stable_after={self.stable_after!r}, "
            f"max_attempts={self.max_attempts!r}, overrides={self._actions!r})"
        )

    def action_for(self, code: int, slug: str) -> Action:
        """The action the table holds for *code* with reason *slug*.

        A private-range twin is looked up as its RFC code (4009 as 1009):
        ws_guard sends twins on servers that refuse RFC codes (daphne; see
        docs/close-codes.md). Twinned are 1001-1003 and 1007-1014, as 4001-4003
        and 4007-4014; other 4xxx codes are looked up as they are. A user's
        override that names the twin itself (``4001: NoRetry(...)``, an app's
        own meaning of 4001) comes first. A slug of a family,
        ``rate_limited:chat``, falls back to the family's (``rate_limited``)
        before the code's.
        """
        family = slug.partition(":")[0]
        rfc = rfc_code(code)
        if rfc != code:
            for own in ((code, slug), (code, family), code):
                action = self._actions.get(own)
                if action is not None:
                    return action
            code = rfc
        for table, key in (
            (self._actions, (code, slug)),
            (DEFAULT_ACTIONS, (code, slug)),
            (self._actions, (code, family)),
            (DEFAULT_ACTIONS, (code, family)),
            (self._actions, code),
            (DEFAULT_ACTIONS, code),
        ):
            action = table.get(key)
            if action is not None:
                return action
        return self.fallback

    def is_planned(self, code: int, reason: str) -> bool:
        """True when the table holds a planned end for *code*/*reason* (``planned=True``)."""
        action = self.action_for(code, reason_slug(reason))
        return isinstance(action, RandomDelay) and action.planned

    def decide(self, code: int, reason: str, attempt: int, refreshes: int = 0) -> Decision:
        """What to do after close *code*/*reason*, the *attempt*-th close in a row.

        *refreshes* counts the token refreshes already made in this run of
        closes. Pure apart from one draw from the random source.
        """
        action = self.action_for(code, reason_slug(reason))
        if isinstance(action, NoRetry):
            return Stop(code, reason, attempt, action.why or f"no retry after close code {code}")
        hint = retry_after_hint(reason)
        if hint is not None:
            hint = min(hint, self.max_hint)
        if isinstance(action, RefreshToken):
            if refreshes >= action.max_refreshes:
                why = f"the token was still refused after {refreshes} refreshes"
                return Stop(code, reason, attempt, why)
            if refreshes == 0:
                delay = self._after_hint(0.0, hint)
            else:
                delay = self._backoff(action.backoff, refreshes, hint)
            return RefreshThenRetry(delay, code, reason, attempt)
        planned = isinstance(action, RandomDelay) and action.planned
        # A planned end is no failure: max_attempts is not spent on it.
        if not planned and self.max_attempts is not None and attempt > self.max_attempts:
            why = f"gave up after {self.max_attempts} reconnect attempts"
            return Stop(code, reason, attempt, why)
        if isinstance(action, Backoff):
            return Retry(self._backoff(action, attempt, hint), code, reason, attempt)
        delay = action.low + self._random.random() * (action.high - action.low)
        return Retry(self._after_hint(delay, hint), code, reason, attempt)

    def session(self) -> ReconnectSession:
        """A fresh attempt counter for one client."""
        return ReconnectSession(self)

    def _step(self, backoff: Backoff, attempt: int) -> float:
        """The back-off floor of *attempt* (1-based), in seconds.

        ``min(cap, initial * factor ** (attempt - 1))``: 1, 2, 4, ... 60 s with
        the defaults, as the close-code guidance asks (docs/close-codes.md).
        """
        try:
            growth = backoff.factor ** (attempt - 1)
        except OverflowError:
            growth = float("inf")
        return min(self.cap, backoff.initial * growth)

    def _backoff(self, backoff: Backoff, attempt: int, hint: float | None) -> float:
        """The delay before back-off *attempt*, in seconds; one random draw.

        Without a hint: uniform in ``[step, min(cap, 2 * step)]``, never below
        the step (nobody comes back early) and spread over up to one more step
        (a herd closed at once does not return at once). Once the step reaches
        the cap, every delay is the cap. With a hint: the hint plus a uniform
        draw in ``[0, step]``, at most ``max(cap, hint)``.
        """
        step = self._step(backoff, attempt)
        if hint is not None:
            return self._after_hint(self._random.random() * step, hint)
        # step <= ceiling <= 2 * step, so ceiling - step is exact (Sterbenz) and
        # the sum below never rounds past the ceiling.
        ceiling = min(self.cap, 2.0 * step)
        return step + self._random.random() * (ceiling - step)

    def _after_hint(self, delay: float, hint: float | None) -> float:
        """Never before the hint; jitter on top of it; at most the cap (or the hint)."""
        if hint is None:
            return min(delay, self.cap)
        return min(hint + delay, max(self.cap, hint))


class ReconnectSession:
    """The attempt counter of one client: the policy's only state.

    Call :meth:`opened` when a connection opens and :meth:`closed` when it
    ends or a connect fails. A connection that stayed open for
    ``stable_after`` seconds starts a new run: attempt 1, no refreshes.
    """

    __slots__ = ("_opened_at", "attempt", "policy", "refreshes")

    def __init__(self, policy: ReconnectPolicy) -> None:
        self.policy = policy
        self.attempt = 0
        self.refreshes = 0
        self._opened_at: float | None = None

    def opened(self) -> None:
        self._opened_at = self.policy.clock()

    def closed(self, code: int, reason: str) -> Decision:
        opened_at, self._opened_at = self._opened_at, None
        if opened_at is not None and self.policy.clock() - opened_at >= self.policy.stable_after:
            self.reset()
        if self.policy.is_planned(code, reason):
            # The server ended a working connection on purpose: a new run,
            # as after a stable connection; the decision's attempt is 0.
            self.reset()
            return self.policy.decide(code, reason, 0)
        self.attempt += 1
        decision = self.policy.decide(code, reason, self.attempt, self.refreshes)
        if isinstance(decision, RefreshThenRetry):
            self.refreshes += 1
        return decision

    def reset(self) -> None:
        self.attempt = 0
        self.refreshes = 0
