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
from ws_guard.rules.limits.keying import redis_key
from ws_guard.rules.limits.leases import STORAGE_DOWN, CountedWindow, LeaseBook, LeasedWindow
from ws_guard.rules.limits.limit_rule import LimitRule
from ws_guard.rules.limits.rates import Rate, describe_rates, join_rates, parse_rates
from ws_guard.rules.limits.tiers import Tiers, is_tiered, rate_tier, require_claims, tier_name
from ws_guard.types import Message

if TYPE_CHECKING:
    from ws_guard.rules.context import RuleContext
    from ws_guard.rules.runtime import Runtime

logger = logging.getLogger("ws_guard")

_INF = float("inf")
Window = CountedWindow | LeasedWindow


class MessageRate(LimitRule):
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
    """

    public_name = "MessageRate"

    def __init__(
        self,
        rate: str | Sequence[str] | Any,
        key: KeyFunc = by_connection,
        *,
        match: Match | None = None,
        lease: int | None = None,
        enforce: bool = True,
        name: str | None = None,
    ) -> None:
        super().__init__(enforce=enforce, name=name)
        #: The per-tier rate callable and its parsed tiers; ``None`` for a fixed rate.
        self.tiers: Tiers[tuple[Rate, ...]] | None = None
        if is_tiered(rate):
            self.tiers = Tiers(self.public_name, rate, rate_tier)
            self.rates: tuple[Rate, ...] = ()
        else:
            self.rates = parse_rates(rate)
        #: The per-kind predicate; ``None`` counts every message.
        self.match: Match | None = None
        #: The kind's name in the close reason (``rate_limited:<kind>``); ``None`` without match.
        self.kind: str | None = None
        if match is not None:
            self.match = check_match(self.public_name, match)
            self.kind = check_kind_name(self.public_name, name)
        self.key = self._check_key(key)
        self.lease = None if lease is None else check_count("lease", lease)
        limits = join_rates(self.rates) if self.tiers is None else tier_name(rate)
        self.id = self._storage_id(name, limits)
        self._maps: list[ExpiringStates[Any]] = []
        #: Shared-key windows per tier (a tiered rule's ``_maps``), made at first use.
        self._tier_maps: dict[tuple[Rate, ...], list[ExpiringStates[Any]]] = {}
        self._book: LeaseBook | None = None
        self._failed = self.breach(INTERNAL_ERROR, REASON_INTERNAL_ERROR)
        self._match_logged = False

    def _limit_arg(self) -> object:
        return describe_rates(self.rates) if self.tiers is None else self.tiers.func

    def bind(self, guard: Runtime) -> None:
        super().bind(guard)
        if self.tiers is not None:
            require_claims(guard, self)

    async def startup(self, guard: Runtime) -> None:
        if self.key is by_connection:
            return
        if not guard.storage.is_memory:
            self._book = LeaseBook(guard)
        if self.tiers is None:
            self._maps = self._make_maps(guard, self.rates, None)

    def _make_maps(
        self, guard: Runtime, rates: tuple[Rate, ...], tier: str | None
    ) -> list[ExpiringStates[Any]]:
        """Shared-key windows for *rates*, swept on the maintenance task; *tier* names
        a tier's windows in storage (``None`` for a fixed rate: its keys stay as they were)."""
        book = self._book
        maps: list[ExpiringStates[Any]]
        if book is None:
            maps = [ExpiringStates(r.window, _counted(r)) for r in rates]
        else:
            maps = [
                ExpiringStates(r.window, self._leased(book, i, r, tier))
                for i, r in enumerate(rates)
            ]
        for states in maps:
            self._every(guard, states.interval, _sweeper(states, guard))
        return maps

    def _maps_for(self, rates: tuple[Rate, ...]) -> list[ExpiringStates[Any]]:
        """The shared-key windows of *rates*: the rule's own, or its tier's (made here)."""
        if self.tiers is None:
            return self._maps
        maps = self._tier_maps.get(rates)
        if maps is None:
            maps = self._tier_maps[rates] = self._make_maps(
                self._runtime(), rates, join_rates(rates)
            )
        return maps

    async def shutdown(self, guard: Runtime) -> None:
        await super().shutdown(guard)
        if self._book is not None:
            await self._book.close()
            self._book = None
        self._maps = []
        self._tier_maps = {}

    def _leased(
        self, book: LeaseBook, i: int, rate: Rate, tier: str | None
    ) -> Callable[[str], LeasedWindow]:
        max_lease = self.lease or max(1, rate.limit // 10)
        # A tier's rates are part of its keys: two tiers never share a window.
        suffix: tuple[object, ...] = (i,) if tier is None else (tier, i)

        def make(key: str) -> LeasedWindow:
            return LeasedWindow(
                book,
                redis_key(book.guard.namespace, "msg", self.id, key, *suffix),
                rate.limit,
                rate.window,
                max_lease,
            )

        return make

    # -- admission: learn whether a shared key's window is already spent -----
    async def admit(self, conn: RuleContext) -> Close | None:
        rates = self.rates
        if self.tiers is not None:
            tier = self.tiers.limit_for(conn, self)
            if isinstance(tier, Close):
                return tier  # in shadow mode the connection goes on, unlimited by this rule
            conn.extra[self] = rates = tier
            if self.key is not by_connection:
                self._maps_for(rates)
        book = self._book
        if book is None:
            return None
        key = self._read_key(conn)
        if key is None or isinstance(key, Close):
            return key
        now = book.now()
        for states in self._maps_for(rates):
            if not await states.get(key, now).prime():
                if not book.fail_open:
                    return self._unavailable()
                break
        return None

    # -- the message check ------------------------------------------------------
    def checker(self, conn: RuleContext) -> Checker | None:
        rates = self.rates
        if self.tiers is not None:
            tier: tuple[Rate, ...] | None = conn.extra.get(self)
            if tier is None:
                return None  # the tier callable failed in shadow mode: not limited here
            rates = tier
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

        Neither is a per-kind or per-tier rate: each is checked on its own.
        """
        if self.key is not by_connection or len(self.rates) != 1 or self.match is not None:
            return None
        return SingleRate(self.rates[0].limit, self.rates[0].window, self._deny, self._share)

    def _checker(self, conn: RuleContext, rates: tuple[Rate, ...]) -> Checker:
        guard = self._runtime()
        if self.key is by_connection:
            if len(rates) == 1:
                return self._single_checker(guard, rates[0])
            windows = [CountedWindow(r.limit, r.window) for r in rates]
            return self._combine(guard, lambda t: windows)
        maps = self._maps if self.tiers is None else self._tier_maps.get(rates)
        if not maps:
            raise self._not_started()
        if len(rates) == 1:
            return self._single_shared_checker(conn, guard, maps[0])
        return self._combine(guard, self._shared_windows(conn, maps))

    def _limited(self, retry: float | None = None) -> Close:
        if self.kind is not None:
            return self.breach(POLICY_VIOLATION, f"{REASON_RATE_LIMITED_PREFIX}{self.kind}", retry)
        return self.breach(POLICY_VIOLATION, REASON_RATE_LIMITED, retry)

    def _deny(self, retry: float) -> Close:
        """The close for a message *retry* seconds before its window frees, or in an outage."""
        return self._unavailable() if retry == STORAGE_DOWN else self._limited(retry)

    def _single_checker(self, guard: Runtime, rate: Rate) -> Checker:
        """The common case, kept to a clock read and two comparisons."""
        now = guard.scheduler.clock
        limit, window = rate.limit, rate.window
        report = _Report(self._deny, self.enforce)
        end = -_INF
        count = 0

        def check(message: Message) -> Close | None:
            nonlocal end, count
            t = now()
            if t >= end:
                end = t + window
                count = 1
                return None
            if count < limit:
                count += 1
                return None
            return report(t, end - t, end)

        return check

    def _single_shared_checker(
        self, conn: RuleContext, guard: Runtime, states: ExpiringStates[Any]
    ) -> Checker:
        """One rate on a shared key: a clock read, one comparison, the window's ``take``."""
        clock = guard.scheduler.clock
        key_of = self._read_key
        report = _Report(self._deny, self.enforce)
        window: Window | None = None
        key: str | None = None

        def check(message: Message) -> Close | None:
            nonlocal window, key
            t = clock()
            held = window
            if held is None or t >= held.end:  # a dead window may have been swept: look it up
                if key is None:
                    found = key_of(conn)  # by_user may appear only after an in-band token
                    if found is None or isinstance(found, Close):
                        return found
                    key = found
                held = window = states.get(key, t)
            retry = held.take(t)
            if retry is None:
                return None
            return report(t, retry)

        return check

    def _shared_windows(
        self, conn: RuleContext, maps: list[ExpiringStates[Any]]
    ) -> Callable[[float], list[Window] | Close | None]:
        key_of = self._read_key
        held: list[Window] = []
        key: str | None = None

        def windows_at(t: float) -> list[Window] | Close | None:
            nonlocal key
            if key is None:
                found = key_of(conn)  # by_user may appear only after an in-band token
                if found is None or isinstance(found, Close):
                    return found
                key = found
                held.extend(states.get(key, t) for states in maps)
                return held
            for i, window in enumerate(held):
                if t >= window.end:  # a dead window may have been swept: look it up again
                    held[i] = maps[i].get(key, t)
            return held

        return windows_at

    def _combine(self, guard: Runtime, windows_at: Callable[[float], Any]) -> Checker:
        now = guard.scheduler.clock
        report = _Report(self._deny, self.enforce)

        def check(message: Message) -> Close | None:
            t = now()
            windows = windows_at(t)
            if windows is None or isinstance(windows, Close):
                return windows
            worst: float | None = None
            for window in windows:
                retry = window.take(t)
                if retry is not None and worst != STORAGE_DOWN:
                    worst = retry if worst is None or retry == STORAGE_DOWN else max(worst, retry)
            if worst is None:
                return None
            return report(t, worst)

        return check


class _Report:
    """A checker's breach path: the close, or nothing while shadow mode is quiet.

    In shadow mode (``enforce=False``) a breach is reported once per window,
    not once per message: after a report, breaches stay quiet until the
    window ends (``until``, by default *retry* seconds on, or one second
    while storage is down). Only breaches call it, so a message that passes
    pays nothing for it.
    """

    __slots__ = ("deny", "enforce", "quiet_until")

    def __init__(self, deny: Callable[[float], Close], enforce: bool) -> None:
        self.deny = deny
        self.enforce = enforce
        self.quiet_until = -_INF

    def __call__(self, t: float, retry: float, until: float | None = None) -> Close | None:
        """The close for a breach at *t* (seconds on the guard's clock), *retry* seconds left."""
        if not self.enforce:
            if t < self.quiet_until:
                return None
            if until is None:  # a storage outage reports once a second
                until = t + (1.0 if retry == STORAGE_DOWN else retry)
            self.quiet_until = until
        return self.deny(retry)


def _counted(rate: Rate) -> Callable[[str], CountedWindow]:
    return lambda key: CountedWindow(rate.limit, rate.window)


def _sweeper(states: ExpiringStates[Any], guard: Runtime) -> Callable[[], Any]:
    async def sweep() -> None:
        states.sweep(guard.scheduler.clock())

    return sweep
