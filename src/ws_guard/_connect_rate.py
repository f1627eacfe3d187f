"""``ConnectRate``: handshake attempts per key, else 1008
``connect_rate_limited; retry-after=<seconds>``.

Every attempt counts, admitted or rejected, in a moving window: an attempt
is rejected when ``limit`` attempts already fell within the last ``T``
seconds. A client that keeps hammering therefore stays out until it pauses
for ``T``; the retry hint says when its next attempt would be admitted.

Only the last ``limit`` attempt times per key are kept (the ``limit``-th
most recent one decides), in an array in memory or a capped list in Redis.
``limits``' moving window records admitted hits only, and its fixed window
lets a hammering client back in at every window edge, so this small log is
written here.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ._close import POLICY_VIOLATION, TRY_AGAIN_LATER, Close
from ._errors import ConfigurationError
from ._keys import KeyFunc, by_ip, by_user
from ._rule import Rule, Stage
from ._shared import (
    ExpiringStates,
    Rate,
    bind_once,
    check_key,
    describe_rates,
    join_rates,
    key_label,
    parse_rates,
    redis_key,
)

if TYPE_CHECKING:
    from ._connection import Connection
    from ._guard import Guard

#: One round trip for every rate of a key; Redis' clock, so hosts need not agree.
ATTEMPT_SCRIPT = """
redis.replicate_commands()
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local allowed = 1
local retry = 0
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[2 * i - 1])
  local window = tonumber(ARGV[2 * i])
  local oldest = redis.call('LINDEX', key, limit - 1)
  if oldest and now - tonumber(oldest) < window then allowed = 0 end
  redis.call('LPUSH', key, string.format('%d', now))
  redis.call('LTRIM', key, 0, limit - 1)
  redis.call('PEXPIRE', key, window)
  local first = redis.call('LINDEX', key, limit - 1)
  if first then
    local wait = tonumber(first) + window - now
    if wait > retry then retry = wait end
  end
end
return {allowed, retry}
"""


class AttemptLog:
    """The last ``limit`` attempt times of one key, per rate, as ring buffers."""

    __slots__ = ("heads", "last", "rates", "rings", "span")

    def __init__(self, rates: tuple[Rate, ...]) -> None:
        self.rates = rates
        self.rings = [array("d", [float("-inf")]) * rate.limit for rate in rates]
        self.heads = [0] * len(rates)
        self.span = max(rate.window for rate in rates)
        self.last = float("-inf")

    def alive(self, now: float) -> bool:
        return now < self.last + self.span

    def hit(self, t: float) -> float | None:
        """Record an attempt; ``None`` admits, a number is the retry hint."""
        admitted = True
        retry = 0.0
        for i, rate in enumerate(self.rates):
            ring, head = self.rings[i], self.heads[i]
            if t - ring[head] < rate.window:  # the limit-th most recent attempt is recent
                admitted = False
            ring[head] = t
            head = self.heads[i] = (head + 1) % rate.limit
            retry = max(retry, ring[head] + rate.window - t)
        self.last = t
        return None if admitted else retry


class ConnectRate(Rule):
    """At most ``rate`` handshake attempts per key (default ``rules.by_ip``)."""

    stage = Stage.CONNECT_RATE

    def __init__(
        self,
        rate: str | Sequence[str] | Any,
        key: KeyFunc = by_ip,
        *,
        enforce: bool = True,
        name: str | None = None,
    ) -> None:
        super().__init__(enforce=enforce, name=name)
        self.rates: tuple[Rate, ...] = parse_rates(rate)
        self.key = check_key(key, "ConnectRate", per_connection=False)
        if key is by_user:
            raise ConfigurationError(
                "ConnectRate runs before authentication, so key=rules.by_user is not known "
                "yet; use rules.by_ip or a callable of the request"
            )
        #: Names this rule's keys in shared storage; give ``name=`` to keep it stable.
        self.id = name or f"{key_label(self.key)}:{join_rates(self.rates)}"
        self._args = [value for r in self.rates for value in (r.limit, int(r.window * 1000))]
        self._guard: Guard | None = None
        self._logs: ExpiringStates[AttemptLog] | None = None
        self._script: Any = None
        self._job: object | None = None

    def __repr__(self) -> str:
        return (
            f"ConnectRate({describe_rates(self.rates)!r}, key={key_label(self.key)}, "
            f"enforce={self.enforce!r}, name={self.name!r})"
        )

    def bind(self, guard: Guard) -> None:
        self._guard = bind_once(self._guard, guard, self)

    async def startup(self, guard: Guard) -> None:
        storage = guard.storage
        if storage.is_memory:
            rates = self.rates
            logs = self._logs = ExpiringStates(
                max(r.window for r in rates), lambda k: AttemptLog(rates)
            )

            async def sweep() -> None:
                logs.sweep(guard.scheduler.clock())

            self._job = storage.add_job(logs.interval, sweep)
        else:
            self._script = storage.script(ATTEMPT_SCRIPT)

    async def shutdown(self, guard: Guard) -> None:
        if self._job is not None:
            guard.storage.remove_job(self._job)
            self._job = None
        self._logs = None
        self._script = None

    async def admit(self, conn: Connection) -> Close | None:
        key = self.key(conn)
        if key is None:
            return None
        guard = conn.guard
        retry: float | None
        if self._logs is not None:
            now = guard.scheduler.clock()
            retry = self._logs.get(key, now).hit(now)
        elif self._script is not None:
            keys = [redis_key("connect", self.id, key, i) for i in range(len(self.rates))]
            try:
                admitted, wait_ms = await self._script(keys, self._args)
            except guard.storage.errors as exc:
                if guard.report_storage_error(exc, "connect rate"):
                    return None
                return self.breach(TRY_AGAIN_LATER, "storage_unavailable")
            retry = None if int(admitted) else int(wait_ms) / 1000.0
        else:
            raise RuntimeError("ConnectRate is used before Guard.startup()")
        if retry is None:
            return None
        return self.breach(POLICY_VIOLATION, "connect_rate_limited", retry)
