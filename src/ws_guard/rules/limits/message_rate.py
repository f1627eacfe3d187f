"""``MessageRate``: client messages per key, else 1008 ``rate_limited; retry-after=<seconds>``.

Every window here is a *fixed window opened by the first message*, the
semantics of ``limits``' fixed-window strategy: the first message at ``t0``
opens ``[t0, t0 + T)``, which admits ``limit`` messages; the first message at
or after ``t0 + T`` opens the next one. The retry hint is the time until the
window ends. The check is plain arithmetic on state the connection already
holds; shared keys with Redis storage spend quota leased in the background
(:mod:`ws_guard.rules.limits.leases`), so no message waits for storage.

A per-kind rate (``match=``) counts only the messages its predicate accepts
and closes with ``rate_limited:<name>``; a per-tier rate (a callable for
``rate``, :mod:`ws_guard.rules.limits.tiers`) picks its rates per
connection at admission, and each tier counts in windows of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ws_guard._core.decisions import Close
from ws_guard._validate import check_count
from ws_guard.codes import (
    INTERNAL_ERROR,
    POLICY_VIOLATION,
    REASON_INTERNAL_ERROR,
    REASON_RATE_LIMITED,
    REASON_RATE_LIMITED_PREFIX,
)
from ws_guard.rules.auth.session import refresh_session
from ws_guard.rules.context import Checker
from ws_guard.rules.fast import SingleRate
from ws_guard.rules.keys import KeyFunc, by_connection
from ws_guard.rules.kinds import Match, check_kind_name, check_match, kind_check
from ws_guard.rules.limits.expiring import ExpiringStates
from ws_guard.rules.limits.leases import CountedWindow
from ws_guard.rules.limits.rate_checks import (
    Report,
    combined_checker,
    shared_windows,
    single_checker,
    single_shared_checker,
)
from ws_guard.rules.limits.rate_rule import RateRule
from ws_guard.rules.limits.rates import Rate
from ws_guard.rules.limits.warning import Warner, check_warn_at, thresholds

if TYPE_CHECKING:
    from ws_guard.rules.context import RuleContext

logger = logging.getLogger("ws_guard")


class MessageRate(RateRule):
    """At most ``rate`` messages per key, else 1008 ``rate_limited; retry-after=<seconds>``.

    ``key=rules.by_connection`` (the default) counts each connection on its
    own, in the connection's check. Shared keys (``by_ip``, ``by_user``, a
    callable) count in process memory with ``memory://`` storage, and across
    processes with Redis, where quota is taken in leases of at most ``lease``
    messages (default: a tenth of the limit).

    ``match=predicate`` (with ``name=``, required) counts only the messages
    for which ``predicate(message)`` is true (the ASGI ``websocket.receive``
    dict; see :func:`ws_guard.rules.json_type`) and closes with 1008
    ``rate_limited:<name>; retry-after=<seconds>``; a predicate that raises
    closes 1011 ``internal_error``, as a raising ``Content`` check does.
    ``rate`` may be a callable of the connection's
    :class:`~ws_guard.ConnectionInfo` returning a rate string, called once
    at admission (see :mod:`ws_guard.rules.limits.tiers`).
    ``warn_at`` (a fraction in (0, 1)) sends one ``rate.warning`` per window
    (:mod:`ws_guard.rules.limits.warning`).
    """

    public_name = "MessageRate"
    storage_kind = "msg"

    def __init__(
        self,
        rate: str | Sequence[str] | Any,
        key: KeyFunc = by_connection,
        *,
        match: Match | None = None,
        lease: int | None = None,
        warn_at: float | None = None,
        enforce: bool = True,
        name: str | None = None,
    ) -> None:
        super().__init__(enforce=enforce, name=name)
        limits = self._init_rates(rate)
        #: The per-kind predicate; ``None`` counts every message.
        self.match: Match | None = None
        #: The kind's name in the close reason (``rate_limited:<kind>``); ``None`` without match.
        self.kind: str | None = None
        if match is not None:
            self.match = check_match(self.public_name, match)
            self.kind = check_kind_name(self.public_name, name)
        self.key = self._check_key(key)
        self.lease = None if lease is None else check_count("lease", lease)
        self.warn_at = check_warn_at("MessageRate warn_at", warn_at)
        self.id = self._storage_id(name, limits)
        self._failed = self.breach(INTERNAL_ERROR, REASON_INTERNAL_ERROR)
        self._match_logged = False

    # -- the message check ------------------------------------------------------
    def checker(self, conn: RuleContext) -> Checker | None:
        rates = self._rates_of(conn)
        if rates is None:
            return None  # the tier callable failed in shadow mode: not limited here
        check = self._checker(conn, rates)
        if self.match is not None:
            check = kind_check(conn, self.match, check, self._match_failed)
        self._share(conn, check)
        return check

    def _match_failed(self) -> Close:
        """The decision when ``match`` raised (called in its ``except``: logs the traceback).

        Logged once per rule, as a failing ``Content`` check: in shadow mode
        every message would log a traceback.
        """
        if not self._match_logged:
            self._match_logged = True
            logger.exception("ws_guard MessageRate %r match raised; closing 1011", self.name)
        return self._failed

    def _share(self, conn: RuleContext, check: Checker) -> None:
        # An in-band token refresh is consumed by the auth rule before any
        # rate sees it; it counts here too, before its signature is checked.
        session = refresh_session(conn)
        if session is not None:
            session.rates += (check,)

    def fast_check(self) -> SingleRate | None:
        """One rate per connection is a window the fast path keeps; shared keys are not.

        Neither is a per-kind or per-tier rate, nor one with ``warn_at``: each
        is checked on its own.
        """
        if (
            self.key is not by_connection
            or len(self.rates) != 1
            or self.match is not None
            or self.warn_at is not None
        ):
            return None
        return SingleRate(self.rates[0].limit, self.rates[0].window, self._deny, self._share)

    def _checker(self, conn: RuleContext, rates: tuple[Rate, ...]) -> Checker:
        clock = self._runtime().scheduler.clock
        maps = self._shared_maps(rates)
        report = Report(self._deny, self.enforce)
        if self.warn_at is not None and self.enforce:
            warner = Warner(conn, self.name or REASON_RATE_LIMITED, thresholds(rates, self.warn_at))
            return combined_checker(clock, self._windows_at(conn, rates, maps), report, warner)
        if maps is None:
            if len(rates) == 1:
                return single_checker(clock, rates[0], report)
            return combined_checker(clock, self._windows_at(conn, rates, maps), report)
        if len(rates) == 1:
            return single_shared_checker(conn, clock, self._read_key, maps[0], report)
        return combined_checker(clock, shared_windows(conn, self._read_key, maps), report)

    def _windows_at(
        self, conn: RuleContext, rates: tuple[Rate, ...], maps: list[ExpiringStates[Any]] | None
    ) -> Callable[[float], Any]:
        """The connection's windows at a time: its own (*maps* ``None``), or its key's."""
        if maps is not None:
            return shared_windows(conn, self._read_key, maps)
        own = [CountedWindow(r.limit, r.window) for r in rates]
        return lambda t: own

    def _limited(self, retry: float | None = None) -> Close:
        if self.kind is not None:
            return self.breach(POLICY_VIOLATION, f"{REASON_RATE_LIMITED_PREFIX}{self.kind}", retry)
        return self.breach(POLICY_VIOLATION, REASON_RATE_LIMITED, retry)
