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
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from ws_guard.rules.context import RuleContext
    from ws_guard.rules.runtime import Runtime

#: Keys one rule tracks in process memory by default (about 250 B each: 25 MB).
DEFAULT_MAX_KEYS = 100_000


class ConnectRate(LimitRule):
    """At most ``rate`` handshake attempts per key (default ``rules.by_ip``)."""

    stage = Stage.CONNECT_RATE
    public_name = "ConnectRate"

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
        self.rates: tuple[Rate, ...] = parse_rates(rate)
        #: Keys kept in process memory at most; the least recently used goes first.
        self.max_keys = check_count("ConnectRate max_keys", max_keys)
        self.key = self._check_key(key, per_connection=False)
        if key is by_user:
            raise ConfigurationError(
                "ConnectRate runs before authentication, so key=rules.by_user is not known "
                "yet; use rules.by_ip or a callable of the request"
            )
        self.id = self._storage_id(name, join_rates(self.rates))
        self._args = [value for r in self.rates for value in (r.limit, int(r.window * 1000))]
        #: memory:// counters, or the per-process fallback while Redis is down.
        self._counters: CounterStore | None = None
        self._script: Any = None

    def _limit_arg(self) -> str:
        return describe_rates(self.rates)

    @property
    def evicted(self) -> int:
        """Live keys this process dropped to stay within ``max_keys``."""
        return 0 if self._counters is None else self._counters.evicted

    async def startup(self, guard: Runtime) -> None:
        storage = guard.storage
        counters = self._counters = CounterStore(self.rates, self.max_keys)

        async def sweep() -> None:
            counters.sweep(guard.scheduler.clock())

        # Counters expire by the window after their last attempt; sweeping
        # every shortest window keeps expired keys for at most one more.
        self._every(guard, min(r.window for r in self.rates), sweep)
        if not storage.is_memory:
            self._script = storage.script(ATTEMPT_SCRIPT)

    async def shutdown(self, guard: Runtime) -> None:
        await super().shutdown(guard)
        self._counters = None
        self._script = None

    async def admit(self, conn: RuleContext) -> Close | None:
        key = self.key(conn)
        if key is None:
            return None
        guard = conn.guard
        counters = self._counters
        if counters is None:
            raise self._not_started()
        retry: float | None
        if self._script is None:
            retry = counters.hit(key, guard.scheduler.clock())
        else:
            rkey = redis_key(guard.namespace, "connect", self.id, key)
            try:
                admitted, wait_ms = await self._script([rkey], self._args)
            except guard.storage.errors as exc:
                if not guard.report_storage_error(exc, "connect rate"):
                    return self._unavailable()
                # Fail open to this process' own count, as MessageRate does.
                retry = counters.hit(key, guard.scheduler.clock())
            else:
                retry = None if int(admitted) else int(wait_ms) / 1000.0
        return None if retry is None else self._limited(retry)

    def _limited(self, retry: float | None = None) -> Close:
        return self.breach(POLICY_VIOLATION, REASON_CONNECT_RATE_LIMITED, retry)
