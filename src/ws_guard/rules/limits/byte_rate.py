"""``ByteRate``: client bytes per key, else 1008 ``rate_limited; retry-after=<seconds>``.

The windows are ``MessageRate``'s (fixed windows opened by the first
message; on Redis, quota leased in the background), spent by each message's
size instead of one: text in UTF-8 bytes, binary in bytes
(:func:`~ws_guard.rules.limits.byte_windows.payload_bytes`). A window admits
exactly ``limit`` bytes: a message is admitted only if all of it fits.

One message larger than the smallest limit can never pass, however long
the client waits, so it closes at once with 1009 ``message_too_big`` (no
retry hint), as ``MaxMessageSize`` would; a guard whose ``MaxMessageSize``
admits messages that ``ByteRate`` can never admit is refused at
construction (docs/rate-limits.md, "ByteRate").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ws_guard._core.decisions import Close
from ws_guard._validate import check_count
from ws_guard.codes import (
    MESSAGE_TOO_BIG,
    POLICY_VIOLATION,
    REASON_MESSAGE_TOO_BIG,
    REASON_RATE_LIMITED,
)
from ws_guard.errors import ConfigurationError
from ws_guard.rules.auth.session import refresh_session
from ws_guard.rules.context import Checker
from ws_guard.rules.keys import KeyFunc, by_connection
from ws_guard.rules.limits.byte_windows import CostWindow, LeasedCostWindow, payload_bytes
from ws_guard.rules.limits.expiring import ExpiringStates
from ws_guard.rules.limits.keying import redis_key
from ws_guard.rules.limits.leases import STORAGE_DOWN, LeaseBook
from ws_guard.rules.limits.limit_rule import LimitRule
from ws_guard.rules.limits.message_rate import _Report, _sweeper
from ws_guard.rules.limits.rates import Rate, describe_rates, join_rates, parse_rates
from ws_guard.rules.limits.warning import Warner, check_warn_at, thresholds, warning_text
from ws_guard.rules.messages import MaxMessageSize
from ws_guard.types import Message

if TYPE_CHECKING:
    from ws_guard.rules.context import RuleContext
    from ws_guard.rules.runtime import Runtime

_INF = float("inf")
Window = CostWindow | LeasedCostWindow


class ByteRate(LimitRule):
    """At most ``limit`` bytes per window, else 1008 ``rate_limited; retry-after=<seconds>``.

    ``limit`` is in ``limits`` syntax with the amount in bytes
    (``"1048576/minute"``, several rates joined by ``;``). ``key`` as for
    ``MessageRate``: ``rules.by_connection`` (the default) counts each
    connection on its own; a shared key counts in memory, or on Redis in
    leases of at most ``lease`` bytes (default: a tenth of the limit).
    ``warn_at`` (a fraction in (0, 1)) sends one ``rate.warning`` per window
    (:mod:`ws_guard.rules.limits.warning`).

    Raises ``ConfigurationError`` for a bad limit, key, lease or warn_at,
    and at ``Guard(...)`` when a ``MaxMessageSize`` of the guard admits
    messages larger than the smallest limit.
    """

    public_name = "ByteRate"

    def __init__(
        self,
        limit: str | Sequence[str] | Any,
        key: KeyFunc = by_connection,
        *,
        lease: int | None = None,
        warn_at: float | None = None,
        enforce: bool = True,
        name: str | None = None,
    ) -> None:
        super().__init__(enforce=enforce, name=name)
        self.rates: tuple[Rate, ...] = parse_rates(limit)
        self.key = self._check_key(key)
        self.lease = None if lease is None else check_count("ByteRate lease", lease)
        self.warn_at = check_warn_at("ByteRate warn_at", warn_at)
        self.id = self._storage_id(name, join_rates(self.rates))
        #: The smallest limit: a message of more bytes can never pass.
        self.max_message = min(rate.limit for rate in self.rates)
        self._too_big = self.breach(MESSAGE_TOO_BIG, REASON_MESSAGE_TOO_BIG)
        self._maps: list[ExpiringStates[Any]] = []
        self._book: LeaseBook | None = None

    def _limit_arg(self) -> str:
        return describe_rates(self.rates)

    def bind(self, guard: Runtime) -> None:
        super().bind(guard)
        for rule in guard.rules:
            if isinstance(rule, MaxMessageSize) and rule.max_bytes > self.max_message:
                raise ConfigurationError(
                    f"{self!r} admits at most {self.max_message} bytes per window, but "
                    f"{rule!r} lets through messages up to {rule.max_bytes} bytes, which "
                    "could never pass; lower MaxMessageSize to at most "
                    f"{self.max_message} or raise the byte rate"
                )

    async def startup(self, guard: Runtime) -> None:
        if self.key is by_connection:
            return
        if guard.storage.is_memory:
            self._maps = [ExpiringStates(r.window, _counted(r)) for r in self.rates]
        else:
            self._book = LeaseBook(guard)
            self._maps = [
                ExpiringStates(r.window, self._leased(self._book, i, r))
                for i, r in enumerate(self.rates)
            ]
        for states in self._maps:
            self._every(guard, states.interval, _sweeper(states, guard))

    async def shutdown(self, guard: Runtime) -> None:
        await super().shutdown(guard)
        if self._book is not None:
            await self._book.close()
            self._book = None
        self._maps = []

    def _leased(self, book: LeaseBook, i: int, rate: Rate) -> Callable[[str], LeasedCostWindow]:
        max_lease = self.lease or max(1, rate.limit // 10)

        def make(key: str) -> LeasedCostWindow:
            return LeasedCostWindow(
                book,
                redis_key(book.guard.namespace, "bytes", self.id, key, i),
                rate.limit,
                rate.window,
                max_lease,
            )

        return make

    # -- admission: learn whether a shared key's window is already spent -----
    async def admit(self, conn: RuleContext) -> Close | None:
        book = self._book
        if book is None:
            return None
        key = self.key(conn)
        if key is None:
            return None
        now = book.now()
        for states in self._maps:
            if not await states.get(key, now).prime():
                if not book.fail_open:
                    return self._unavailable()
                break
        return None

    # -- the message check ------------------------------------------------------
    def checker(self, conn: RuleContext) -> Checker:
        guard = self._runtime()
        if self.key is by_connection and len(self.rates) == 1:
            check = self._single_checker(conn, guard)
        else:
            check = self._windows_checker(conn, guard)
        # An in-band token refresh is consumed by the auth rule before any
        # rate sees it; its bytes count here too, before its signature is checked.
        session = refresh_session(conn)
        if session is not None:
            session.rates += (check,)
        return check

    @property
    def _warns(self) -> bool:
        """Only an enforcing rule warns: shadow mode changes nothing a client sees."""
        return self.warn_at is not None and self.enforce

    def _limited(self, retry: float | None = None) -> Close:
        return self.breach(POLICY_VIOLATION, REASON_RATE_LIMITED, retry)

    def _deny(self, retry: float) -> Close:
        """The close for a message *retry* seconds before its window frees, or in an outage."""
        return self._unavailable() if retry == STORAGE_DOWN else self._limited(retry)

    def _single_checker(self, conn: RuleContext, guard: Runtime) -> Checker:
        """One rate per connection: the size, a clock read and three comparisons."""
        now = guard.scheduler.clock
        limit, window = self.rates[0].limit, self.rates[0].window
        report = _Report(self._deny, self.enforce)
        too_big = self._too_big
        # Without warnings the threshold is never reached: one comparison
        # on the message path instead of a second closure to maintain.
        warn_from: float = _INF
        if self._warns:
            warn_from = thresholds(self.rates, self.warn_at or 0.0)[0]
        label = self.name or REASON_RATE_LIMITED
        quiet_until = -_INF
        end = -_INF
        count = 0

        def check(message: Message) -> Close | None:
            nonlocal end, count
            text = message.get("text")
            if text is not None:
                cost = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
            else:
                data = message.get("bytes")
                cost = 0 if data is None else len(data)
            t = now()
            if t >= end:
                end = t + window
                count = 0
            total = count + cost
            if total <= limit:
                count = total
                if total >= warn_from and t >= quiet_until:  # once per window
                    warn(t)
                return None
            if cost > limit:
                return too_big
            return report(t, end - t, end)

        def warn(t: float) -> None:
            nonlocal quiet_until
            quiet_until = end
            conn.send_soon({"type": "websocket.send", "text": warning_text(label, end - t)})

        return check

    def _windows_checker(self, conn: RuleContext, guard: Runtime) -> Checker:
        """Several rates or a shared key: every window spends the message's size."""
        clock = guard.scheduler.clock
        windows_at = self._windows_at(conn)
        report = _Report(self._deny, self.enforce)
        too_big = self._too_big
        largest = self.max_message
        warner: Warner | None = None
        if self._warns:
            label = self.name or REASON_RATE_LIMITED
            warner = Warner(conn, label, thresholds(self.rates, self.warn_at or 0.0))

        def check(message: Message) -> Close | None:
            cost = payload_bytes(message)
            if cost > largest:
                return too_big  # never fits a window: counts in none
            t = clock()
            windows = windows_at(t)
            if windows is None:
                return None
            worst: float | None = None
            for window in windows:
                retry = window.take(t, cost)
                if retry is not None and worst != STORAGE_DOWN:
                    worst = retry if worst is None or retry == STORAGE_DOWN else max(worst, retry)
            if worst is None:
                if warner is not None:
                    warner.after(t, windows)
                return None
            return report(t, worst)

        return check

    def _windows_at(self, conn: RuleContext) -> Callable[[float], list[Window] | None]:
        """The connection's windows at a time: its own, or its key's (looked up again when dead)."""
        if self.key is by_connection:
            own: list[Window] = [CostWindow(r.limit, r.window) for r in self.rates]
            return lambda t: own
        if not self._maps:
            raise self._not_started()
        key_of = self.key
        maps = self._maps
        held: list[Window] = []
        key: str | None = None

        def windows_at(t: float) -> list[Window] | None:
            nonlocal key
            if key is None:
                key = key_of(conn)  # by_user may appear only after an in-band token
                if key is None:
                    return None
                held.extend(states.get(key, t) for states in maps)
                return held
            for i, window in enumerate(held):
                if t >= window.end:  # a dead window may have been swept: look it up again
                    held[i] = maps[i].get(key, t)
            return held

        return windows_at


def _counted(rate: Rate) -> Callable[[str], CostWindow]:
    return lambda key: CostWindow(rate.limit, rate.window)
