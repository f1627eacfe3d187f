"""``RateRule``: what ``MessageRate`` and ``ByteRate`` share, fixed or per tier.

Both count in fixed windows per key (:mod:`ws_guard.rules.limits.leases`):
a connection's own windows for ``by_connection``; for a shared key, one
:class:`~ws_guard.rules.limits.expiring.ExpiringStates` per rate, in
memory or leased from Redis. A rule whose limit is a callable
(:mod:`ws_guard.rules.limits.tiers`) picks its rates at admission and keeps
the windows of each tier apart: the tier's rates are part of its storage
keys (``...:<rule id>|<key>}:<tier rates>:<i>``).

A subclass sets ``public_name``, ``storage_kind`` (the storage key's
segment), ``counted`` and ``leased`` (its window classes), calls
:meth:`_init_rates` before ``_check_key`` and ``_storage_id``, and builds
its check from :meth:`_rates_of` and :meth:`_shared_maps`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from ws_guard._core.decisions import Close
from ws_guard.rules.keys import by_connection
from ws_guard.rules.limits.expiring import ExpiringStates
from ws_guard.rules.limits.keying import redis_key
from ws_guard.rules.limits.leases import STORAGE_DOWN, CountedWindow, LeaseBook, LeasedWindow
from ws_guard.rules.limits.limit_rule import LimitRule
from ws_guard.rules.limits.rate_checks import sweeper
from ws_guard.rules.limits.rates import Rate, describe_rates, join_rates, parse_rates
from ws_guard.rules.limits.tiers import Tiers, is_tiered, rate_tier, require_claims, tier_name

if TYPE_CHECKING:
    from ws_guard.rules.context import RuleContext
    from ws_guard.rules.runtime import Runtime

Rates = tuple[Rate, ...]


class RateRule(LimitRule):
    """Base of the rules that count client messages (or their bytes) per key in windows."""

    #: The storage key's segment for this rule's windows (``"msg"``, ``"bytes"``).
    storage_kind: ClassVar[str]
    #: The window of one connection or of a shared key in memory.
    counted: ClassVar[type[CountedWindow]] = CountedWindow
    #: The window of a shared key on Redis.
    leased: ClassVar[type[LeasedWindow]] = LeasedWindow

    #: The fixed rates; ``()`` for a tiered rule (each connection has its tier's).
    rates: Rates
    #: The per-tier rate callable and its parsed tiers; ``None`` for fixed rates.
    tiers: Tiers[Rates] | None
    #: The most one Redis lease takes; ``None`` for a tenth of the limit.
    lease: int | None

    def _init_rates(self, value: str | Sequence[str] | Any) -> str:
        """Parse *value* (rates, or a tier callable); the limits part of the storage id."""
        self._maps: list[ExpiringStates[Any]] = []
        #: Shared-key windows per tier (a tiered rule's ``_maps``), made at first use.
        self._tier_maps: dict[Rates, list[ExpiringStates[Any]]] = {}
        self._book: LeaseBook | None = None
        if is_tiered(value):
            self.tiers = Tiers(self.public_name, value, self._parse_tier)
            self.rates = ()
            return tier_name(value)
        self.tiers = None
        self.rates = parse_rates(value)
        return join_rates(self.rates)

    def _parse_tier(self, value: object) -> Rates:
        """A tier callable's value as rates; ``ConfigurationError`` when it is none."""
        return rate_tier(value)

    def _limit_arg(self) -> object:
        return describe_rates(self.rates) if self.tiers is None else self.tiers.func

    def bind(self, guard: Runtime) -> None:
        super().bind(guard)
        if self.tiers is not None:
            require_claims(guard, self)

    # -- lifespan ----------------------------------------------------------
    async def startup(self, guard: Runtime) -> None:
        if self.key is by_connection:
            return
        if not guard.storage.is_memory:
            self._book = LeaseBook(guard)
        if self.tiers is None:
            self._maps = self._make_maps(guard, self.rates, None)

    async def shutdown(self, guard: Runtime) -> None:
        await super().shutdown(guard)
        if self._book is not None:
            await self._book.close()
            self._book = None
        self._maps = []
        self._tier_maps = {}

    def _make_maps(
        self, guard: Runtime, rates: Rates, tier: str | None
    ) -> list[ExpiringStates[Any]]:
        """Shared-key windows for *rates*, swept on the maintenance task; *tier* names
        a tier's windows in storage (``None`` for fixed rates: their keys stay as they were)."""
        book = self._book
        maps: list[ExpiringStates[Any]]
        if book is None:
            maps = [ExpiringStates(r.window, self._counted(r)) for r in rates]
        else:
            maps = [
                ExpiringStates(r.window, self._leased(book, i, r, tier))
                for i, r in enumerate(rates)
            ]
        for states in maps:
            self._every(guard, states.interval, sweeper(states, guard))
        return maps

    def _counted(self, rate: Rate) -> Callable[[str], CountedWindow]:
        window = self.counted
        return lambda key: window(rate.limit, rate.window)

    def _leased(
        self, book: LeaseBook, i: int, rate: Rate, tier: str | None
    ) -> Callable[[str], LeasedWindow]:
        max_lease = self.lease or max(1, rate.limit // 10)
        # A tier's rates are part of its keys: two tiers never share a window.
        suffix: tuple[object, ...] = (i,) if tier is None else (tier, i)
        window = self.leased
        kind = self.storage_kind

        def make(key: str) -> LeasedWindow:
            return window(
                book,
                redis_key(book.guard.namespace, kind, self.id, key, *suffix),
                rate.limit,
                rate.window,
                max_lease,
            )

        return make

    def _maps_for(self, rates: Rates) -> list[ExpiringStates[Any]]:
        """The shared-key windows of *rates*: the rule's own, or its tier's (made here)."""
        if self.tiers is None:
            return self._maps
        maps = self._tier_maps.get(rates)
        if maps is None:
            maps = self._tier_maps[rates] = self._make_maps(
                self._runtime(), rates, join_rates(rates)
            )
        return maps

    # -- admission: the tier, and whether a shared key's window is already spent
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

    # -- the message check -------------------------------------------------
    def _rates_of(self, conn: RuleContext) -> Rates | None:
        """The connection's rates: the fixed ones, its tier's, or ``None`` when its
        tier callable failed in shadow mode (the connection is not limited here)."""
        if self.tiers is None:
            return self.rates
        tier: Rates | None = conn.extra.get(self)
        return tier

    def _shared_maps(self, rates: Rates) -> list[ExpiringStates[Any]] | None:
        """The shared key's windows of *rates*; ``None`` for ``by_connection``."""
        if self.key is by_connection:
            return None
        maps = self._maps if self.tiers is None else self._tier_maps.get(rates)
        if not maps:
            raise self._not_started()
        return maps

    def _deny(self, retry: float) -> Close:
        """The close for a message *retry* seconds before its window frees, or in an outage."""
        return self._unavailable() if retry == STORAGE_DOWN else self._limited(retry)
