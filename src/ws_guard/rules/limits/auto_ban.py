"""``AutoBan``: a key closed for policy ``after`` times within ``within`` seconds is banned.

While banned, the key's handshakes are refused with 1008
``banned; retry-after=<seconds>``. The rule counts the guard's own closes
(rules' and gauges' decisions, initiator ``"guard"``) whose code is in
``codes``, refusals at the handshake included, through the ``on_close``
hook: nothing runs per message. Its own ``banned`` refusals are not counted,
so a banned client that keeps knocking is not banned for longer.

Strikes are kept per key as at most ``after`` times (guard clock) in a map
bounded by ``max_keys`` (the least recently struck key goes first) and swept
of keys with no strike in the window; bans live in the guard's ban store
(``_core/bans.py``), listed by ``guard.bans()`` and lifted by
``guard.unban(key)``. Memory storage: one process.
"""

from __future__ import annotations

import functools
import logging
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ws_guard._core.bans import MAX_BAN
from ws_guard._core.decisions import Close
from ws_guard._validate import check_count, check_seconds
from ws_guard.codes import POLICY_VIOLATION, REASON_BANNED, is_sendable_code
from ws_guard.errors import ConfigurationError
from ws_guard.rules.base import Stage
from ws_guard.rules.keys import UNKNOWN, KeyFunc, by_ip, by_user
from ws_guard.rules.limits.limit_rule import LimitRule

if TYPE_CHECKING:
    from ws_guard.rules.context import RuleContext
    from ws_guard.rules.runtime import Runtime

logger = logging.getLogger("ws_guard")

#: Close codes that say nothing against the client (RFC 6455 section 7.4.1 and
#: the IANA registry): ``AutoBan(codes=...)`` refuses them.
NOT_THE_CLIENTS_FAULT = {
    1000: "a normal closure",
    1001: "a planned end (going away: idle timeout, lifetime, restart)",
    1011: "the server's own error",
    1012: "a server restart",
    1013: "the server's overload",
    1014: "a gateway's error",
}
#: Keys whose strikes one rule keeps at most by default (a few hundred bytes each).
DEFAULT_MAX_KEYS = 100_000
#: Seconds; a longer window or ban (``MAX_BAN``, a week) is a unit mistake
#: (milliseconds), not a plan.
MAX_WINDOW = 86_400.0


class AutoBan(LimitRule):
    """Ban a key (default ``rules.by_ip``) after ``after`` policy closes within ``within`` s.

    The ban lasts ``ban`` seconds; ``codes`` are the close codes that count
    (default ``(1008,)``). With ``enforce=False`` the ban is recorded and
    listed (``shadow=True``) and each of the key's handshakes is counted as
    a shadow breach, but admitted.
    """

    stage = Stage.BAN
    public_name = "AutoBan"

    def __init__(
        self,
        *,
        after: int,
        within: float,
        ban: float,
        key: KeyFunc = by_ip,
        codes: Iterable[int] = (POLICY_VIOLATION,),
        max_keys: int = DEFAULT_MAX_KEYS,
        enforce: bool = True,
        name: str | None = None,
    ) -> None:
        super().__init__(enforce=enforce, name=name)
        self.after = check_count("AutoBan after", after)
        self.within = check_seconds("AutoBan within", within, maximum=MAX_WINDOW)
        self.ban_seconds = check_seconds("AutoBan ban", ban, maximum=MAX_BAN)
        self.codes = _check_codes(codes)
        self.max_keys = check_count("AutoBan max_keys", max_keys)
        self.key = self._check_key(key, per_connection=False)
        if key is by_user:
            raise ConfigurationError(
                "AutoBan checks bans before authentication, so key=rules.by_user is not "
                "known yet; use rules.by_ip or a callable of the request"
            )
        self.id = self._storage_id(name, f"{self.after}/{self.within:g}s")
        #: The label of this rule's own refusals: never counted as a strike.
        self.label = name or REASON_BANNED
        #: key -> the times (guard clock) of its last strikes, at most ``after``.
        self._strikes: dict[str, deque[float]] = {}
        self._next_sweep = float("-inf")

    def _limit_arg(self) -> object:
        return f"after={self.after}, within={self.within:g}, ban={self.ban_seconds:g}"

    def __repr__(self) -> str:
        return (
            f"AutoBan({self._limit_arg()}, codes={sorted(self.codes)!r}, "
            f"enforce={self.enforce!r}, name={self.name!r})"
        )

    def bind(self, guard: Runtime) -> None:
        super().bind(guard)
        # The bans this rule makes are bounded as its strikes are.
        guard.ban_store.reserve(self.max_keys)

    async def admit(self, conn: RuleContext) -> Close | None:
        key = self._read_key(conn)
        if key is None or isinstance(key, Close):
            return key
        left = conn.guard.ban_store.remaining(self.id, key)
        return None if left is None else self._limited(left)

    async def startup(self, guard: Runtime) -> None:
        await super().startup(guard)
        # Strikes other processes count reach this rule by its label (Redis storage).
        guard.ban_store.strikers[self.id] = functools.partial(self._strike, guard, local=False)

    async def shutdown(self, guard: Runtime) -> None:
        guard.ban_store.strikers.pop(self.id, None)
        await super().shutdown(guard)

    def on_close(self, conn: RuleContext, close: Close) -> None:
        if close.code not in self.codes or close.rule == self.label:
            return
        key = self._read_key(conn)
        if not isinstance(key, str) or key.startswith(f"{UNKNOWN}:"):
            return  # no key, a broken key callable, or no address: nothing to ban
        self._strike(conn.guard, key, local=True)

    def _strike(self, guard: Runtime, key: str, *, local: bool) -> None:
        """Count a strike against *key*: one of this process's closes (*local*) or another's.

        With Redis storage each process publishes its strikes and counts all
        of them, so ``after`` closes spread over several workers ban too. A
        ban that a strike heard from elsewhere completes is not announced:
        the process whose own close was that strike bans and announces it.
        """
        now = guard.scheduler.clock()
        if local and guard.ban_store.announce_strike is not None:
            guard.ban_store.announce_strike(self.id, key)
        self._maybe_sweep(now)
        strikes = self._strikes.pop(key, None)  # re-inserted last: the map is LRU-ordered
        if strikes is None:
            strikes = deque(maxlen=self.after)
            if len(self._strikes) >= self.max_keys:
                del self._strikes[next(iter(self._strikes))]
        strikes.append(now)
        if len(strikes) < self.after or now - strikes[0] > self.within:
            self._strikes[key] = strikes
            return
        # Struck out: banned from now; the count starts again after the ban.
        guard.ban_store.ban(
            self.id, key, now + self.ban_seconds, shadow=not self.enforce, local=local
        )
        if local:  # counted once in the cluster, by the process that announces it
            guard.metrics.bans += 1
        logger.warning(
            "ws_guard AutoBan %s key=%s for %g s after %d closes with codes %s within %g s",
            "bans" if self.enforce else "would ban (shadow mode)",
            key,
            self.ban_seconds,
            self.after,
            sorted(self.codes),
            self.within,
            extra={"ws_rule": self.id, "ws_client": key},
        )

    def _maybe_sweep(self, now: float) -> None:
        """Drop keys whose last strike left the window; at most once per window."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.within
        for key in [k for k, times in self._strikes.items() if now - times[-1] > self.within]:
            del self._strikes[key]

    def _limited(self, retry: float | None = None) -> Close:
        return self.breach(POLICY_VIOLATION, REASON_BANNED, retry)


def _check_codes(codes: object) -> frozenset[int]:
    if isinstance(codes, (str, bytes)) or not isinstance(codes, Iterable):
        raise ConfigurationError(f"AutoBan codes must be a list of close codes, not {codes!r}")
    checked = tuple(codes)
    if not checked:
        raise ConfigurationError("AutoBan codes must name at least one close code, not ()")
    for code in checked:
        if not is_sendable_code(code):
            raise ConfigurationError(f"AutoBan codes: {code!r} is not a close code")
        if code in NOT_THE_CLIENTS_FAULT:
            raise ConfigurationError(
                f"AutoBan codes: {code} is {NOT_THE_CLIENTS_FAULT[code]}, not the client's "
                "fault; banning on it would lock clients out for the server's own state"
            )
    return frozenset(checked)
