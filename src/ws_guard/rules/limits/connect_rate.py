"""``ConnectRate``: handshake attempts per key, else 1008
``connect_rate_limited; retry-after=<seconds>``.

Every attempt counts, admitted or rejected, in a sliding-window counter
(:mod:`ws_guard.rules.limits.attempts`): three integers per key and rate, whatever the
limit, in a bounded map in memory or a small hash in Redis. A client that
keeps hammering stays out until it pauses; the retry hint says when its next
attempt would be admitted.

With Redis storage and ``on_storage_error="allow"``, a failed Redis call
falls back to counting in this process (the same counters, in memory), so
each process still enforces the limit on its own while Redis is away.

A per-tier rate (a callable for ``rate``, :mod:`ws_guard.rules.limits.tiers`)
is counted after authentication (:class:`TieredConnectRate`), so the callable
sees the verified claims; each tier counts in counters of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from ws_guard._core.batch import Pending
from ws_guard._core.decisions import Close
from ws_guard._validate import check_count
from ws_guard.codes import POLICY_VIOLATION, REASON_CONNECT_RATE_LIMITED
from ws_guard.errors import ConfigurationError
from ws_guard.rules.base import Stage
from ws_guard.rules.keys import KeyFunc, by_ip, by_user
from ws_guard.rules.limits.attempts import ATTEMPT_SCRIPT, CounterStore
from ws_guard.rules.limits.keying import redis_key
from ws_guard.rules.limits.limit_rule import LimitRule
from ws_guard.rules.limits.rates import Rate, describe_rates, join_rates, parse_rates
from ws_guard.rules.limits.tiers import Tiers, is_tiered, rate_tier, require_claims, tier_name

if TYPE_CHECKING:
    from ws_guard._core.storage import StoredScript
    from ws_guard.rules.context import RuleContext
    from ws_guard.rules.runtime import Runtime

#: Keys one rule tracks in process memory by default (about 250 B each: 25 MB).
DEFAULT_MAX_KEYS = 100_000


class _Tier:
    """One tier's counters: in memory (or the fallback), and its script arguments."""

    __slots__ = ("args", "counters", "suffix")

    def __init__(self, rates: tuple[Rate, ...], max_keys: int, suffix: tuple[str, ...]) -> None:
        self.counters = CounterStore(rates, max_keys)
        #: Limit and window in ms per rate, as ATTEMPT_SCRIPT reads them.
        self.args = [value for r in rates for value in (r.limit, int(r.window * 1000))]
        #: Appended to the Redis key: a tier's rates, so two tiers never share a hash.
        self.suffix = suffix


class ConnectRate(LimitRule):
    """At most ``rate`` handshake attempts per key (default ``rules.by_ip``).

    ``rate`` may be a callable of the connection's
    :class:`~ws_guard.ConnectionInfo` returning a rate string: the rule is
    then a :class:`TieredConnectRate`, counted after authentication.
    """

    stage = Stage.CONNECT_RATE
    public_name = "ConnectRate"

    def __new__(cls, rate: object, *args: Any, **kwargs: Any) -> ConnectRate:
        # A tier callable reads the claims, so the rule moves after auth: a
        # stage is a class attribute, hence the subclass.
        if cls is ConnectRate and is_tiered(rate):
            cls = TieredConnectRate
        return super().__new__(cls)

    def __init__(
        self,
        rate: str | Sequence[str] | Any,
        key: KeyFunc = by_ip,
        *,
        max_keys: int = DEFAULT_MAX_KEYS,
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
        #: Keys kept in process memory at most (per tier); the least recently used goes first.
        self.max_keys = check_count("ConnectRate max_keys", max_keys)
        self.key = self._check_key(key, per_connection=False)
        if key is by_user and self.tiers is None:
            raise ConfigurationError(
                "ConnectRate runs before authentication, so key=rules.by_user is not known "
                "yet; use rules.by_ip or a callable of the request"
            )
        limits = join_rates(self.rates) if self.tiers is None else tier_name(rate)
        self.id = self._storage_id(name, limits)
        #: memory:// counters, or the per-process fallback while Redis is down, per tier.
        self._tiers: dict[tuple[Rate, ...], _Tier] = {}
        #: A fixed rate's counters (its only tier) and script arguments.
        self._counters: CounterStore | None = None
        self._args = [value for r in self.rates for value in (r.limit, int(r.window * 1000))]
        self._started = False
        self._script: StoredScript | None = None
        #: Redis key -> guard-clock time until which this process expects to
        #: refuse it (its last refusal's wait); at most ``max_keys``.
        self._refused: dict[str, float] = {}

    def _limit_arg(self) -> object:
        return describe_rates(self.rates) if self.tiers is None else self.tiers.func

    def bind(self, guard: Runtime) -> None:
        super().bind(guard)
        if self.tiers is not None:
            require_claims(guard, self)

    @property
    def evicted(self) -> int:
        """Live keys this process dropped to stay within ``max_keys``."""
        return sum(tier.counters.evicted for tier in self._tiers.values())

    async def startup(self, guard: Runtime) -> None:
        self._started = True
        if self.tiers is None:
            self._counters = self._tier(guard, self.rates).counters
        if not guard.storage.is_memory:
            self._script = guard.storage.script(ATTEMPT_SCRIPT)

    def _tier(self, guard: Runtime, rates: tuple[Rate, ...]) -> _Tier:
        """The counters of *rates*, made (with their sweep) on first use."""
        tier = self._tiers.get(rates)
        if tier is not None:
            return tier
        # A fixed rate keeps its Redis keys as they were; a tier adds its rates.
        suffix = () if self.tiers is None else (join_rates(rates),)
        tier = self._tiers[rates] = _Tier(rates, self.max_keys, suffix)
        counters = tier.counters

        async def sweep() -> None:
            counters.sweep(guard.scheduler.clock())

        # Counters expire by the window after their last attempt; sweeping
        # every shortest window keeps expired keys for at most one more.
        self._every(guard, min(r.window for r in rates), sweep)
        return tier

    async def shutdown(self, guard: Runtime) -> None:
        await super().shutdown(guard)
        self._tiers = {}
        self._counters = None
        self._started = False
        self._script = None
        self._refused = {}

    async def admit(self, conn: RuleContext) -> Close | None:
        if not self._started:
            raise self._not_started()
        if self._script is not None:
            return await cast(Pending, self.prepare(conn)).run(conn.guard.storage)
        found = self._resolve(conn)
        if not isinstance(found, tuple):
            return found
        tier, key = found
        retry = tier.counters.hit(key, conn.guard.scheduler.clock())
        return None if retry is None else self._limited(retry)

    def prepare(self, conn: RuleContext) -> Pending | None:
        """The attempt's ``ATTEMPT_SCRIPT`` call (Redis storage), sent with the handshake's others.

        It cannot be undone (every attempt counts), so admission sends it
        with nothing before it in the batch.
        """
        script = self._script
        if script is None:
            return None  # memory storage (or not started: admit says so)
        found = self._resolve(conn)
        if not isinstance(found, tuple):
            return Pending.decided(found)
        tier, key = found
        guard = conn.guard
        rkey = redis_key(guard.namespace, "connect", self.id, key, *tier.suffix)
        refused = self._refused
        until = refused.get(rkey)
        now = guard.scheduler.clock()
        if until is not None and until <= now:
            del refused[rkey]
            until = None

        async def finish(reply: Any) -> Close | None:
            retry: float | None
            if isinstance(reply, guard.storage.errors):
                if not guard.report_storage_error(reply, "connect rate"):
                    return self._unavailable()
                # Fail open to this process' own count, as MessageRate does.
                retry = tier.counters.hit(key, guard.scheduler.clock())
            else:
                admitted, wait_ms = reply
                retry = None if int(admitted) else int(wait_ms) / 1000.0
            if retry is None:
                return None
            if len(refused) >= self.max_keys:
                del refused[next(iter(refused))]  # the oldest refusal; bounded like the counters
            refused[rkey] = guard.scheduler.clock() + retry
            return self._limited(retry)

        # A key refused within the wait it was given is refused again first,
        # before the rules after this one (its token is not verified).
        return Pending(script.call([rkey], tier.args), finish, ahead=until is None)

    def _resolve(self, conn: RuleContext) -> tuple[_Tier, str] | Close | None:
        """The connection's tier counters and key; ``None`` (not counted) or the rule's close."""
        rates = self.rates
        if self.tiers is not None:
            resolved = self.tiers.limit_for(conn, self)
            if isinstance(resolved, Close):
                return resolved
            rates = resolved
        key = self._read_key(conn)
        if key is None or isinstance(key, Close):
            return key
        return self._tier(conn.guard, rates), key

    def _limited(self, retry: float | None = None) -> Close:
        return self.breach(POLICY_VIOLATION, REASON_CONNECT_RATE_LIMITED, retry)


class TieredConnectRate(ConnectRate):
    """A ``ConnectRate`` whose rate is a callable of the connection's info.

    Counted after authentication, so the callable sees the verified claims
    (``None`` without an auth rule) and ``key=rules.by_user`` works;
    handshakes that authentication refuses are not counted here (pair it
    with a plain ``ConnectRate`` by address for those). ``rules.ConnectRate``
    returns one when given a callable.
    """

    stage = Stage.TIERED_CONNECT_RATE
